"""Hyperparameters of CoLa-Diff: the shared autoencoder and the conditioned latent diffusion model.

Both are frozen dataclasses, validated strictly (an unknown key is an error) and saved resolved with
every checkpoint. Two presets ship in ``configs/``: ``paper.toml`` (224x224 slices, the paper's
hyperparameters, for a GPU) and ``cpu.toml`` (the CPU-scale recipe of the shipped weights). Each
preset has four tables: ``[autoencoder]`` (:class:`AutoencoderConfig`), ``[autoencoder_training]`` and
``[training]`` (loop settings, :class:`~mrsynth_cli.training.loop.TrainSettings` fields) and
``[model]`` (:class:`CoLaDiffConfig` fields other than target, inputs and the autoencoder).

Every paper component is a switch, so the ablations of the paper's Table 2 run from one config:
``block = "plain"`` with ``large_kernel_fusion = false`` (w/o modified network),
``structural_guidance = false``, ``auto_weight = false``, ``filtering = false``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mrsynth_cli.distill.record import DistillationRecord
from mrsynth_cli.errors import InputError
from mrsynth_cli.families import presets
from mrsynth_cli.io.contrasts import Contrast, parse_contrast

__all__ = [
    "AUTOENCODER_FAMILY",
    "ABLATIONS",
    "GUIDANCE_MAPS",
    "AutoencoderConfig",
    "CoLaDiffConfig",
    "Preset",
    "load_preset",
    "preset_path",
]

_CONFIGS = Path(__file__).resolve().parent / "configs"

SCHEMA_VERSION = 1
#: The ``family`` written into autoencoder checkpoints (not a synthesis family of the registry).
AUTOENCODER_FAMILY = "cola-diff-autoencoder"
#: Guidance maps (model-space tissue maps, see :mod:`mrsynth_cli.preprocessing.tissue_maps`).
GUIDANCE_MAPS = ("CSF", "GM", "WM", "abnormal", "pve_CSF", "pve_GM", "pve_WM")
#: ``--ablate`` names -> the config switches they turn off (the paper's Table 2, top).
ABLATIONS: dict[str, dict[str, Any]] = {
    "network": {"block": "plain", "large_kernel_fusion": False},
    "guidance": {"structural_guidance": False},
    "auto-weight": {"auto_weight": False},
    "filtering": {"filtering": False},
}
SAMPLERS = ("ddim", "fast", "ddpm", "distilled")


def _strict(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"{what} has unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise InputError(f"{what} schema_version {data.get('schema_version')}", f"expected {SCHEMA_VERSION}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def _tuples(instance: Any) -> None:
    """Lists given to a frozen config become tuples (so equal configs compare equal)."""
    for f in fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, list):
            object.__setattr__(instance, f.name, tuple(value))


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        out[k] = _plain(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
    return out


@dataclass(frozen=True)
class AutoencoderConfig:
    """The KL-regularised autoencoder E/D (MONAI ``AutoencoderKL``), shared by every contrast.

    **Why one autoencoder for all contrasts.** The conditions ``y`` are the encoded available
    contrasts and the diffusion runs on the encoded target: with one encoder they live in one latent
    space, so one network serves every target and every subset of inputs, and the autoencoder sees
    four times the data (which matters with few subjects). MR contrasts share anatomy and
    intensity range after scaling, so a per-contrast autoencoder buys little for four times the cost.

    Attributes:
        spatial_dims: 2 (axial slices; MONAI's class also takes 3).
        channels: encoder channels per level; the downsampling factor is ``2 ** (len(channels) - 1)``
            (4 by default, as the paper's LDM-f4).
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention per level.
        latent_channels: channels of the latent (4).
        norm_num_groups: GroupNorm groups (must divide every channel count).
        nonlocal_attention: mid-block self-attention in encoder and decoder.
        kl_weight: weight of the KL term (LDM's "KL-reg", 1e-6).
        adversarial_weight: weight of the patch-adversarial term (0: off).
        adversarial_start: step at which the adversarial term starts.
        discriminator_channels, discriminator_layers: MONAI ``PatchDiscriminator`` size.
        contrasts: contrasts it is trained on.
        spacing_mm, model_shape: the model grid (shared with the diffusion model).
        batch_size: slices per training step.
    """

    spatial_dims: int = 2
    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    latent_channels: int = 4
    norm_num_groups: int = 16
    nonlocal_attention: bool = False
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    discriminator_channels: int = 32
    discriminator_layers: int = 3
    contrasts: tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")
    spacing_mm: float = 2.0
    model_shape: tuple[int, int, int] = (80, 96, 80)
    batch_size: int = 8
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _tuples(self)
        if self.spatial_dims != 2:
            raise InputError("cola-diff autoencoders work on 2D slices (spatial_dims = 2)", "set spatial_dims = 2")
        if len(self.attention_levels) != len(self.channels):
            raise InputError("autoencoder config: attention_levels needs one flag per channel level", "fix the config")
        if any(c % self.norm_num_groups for c in self.channels):
            raise InputError(
                f"autoencoder config: channels {self.channels} must divide by norm_num_groups {self.norm_num_groups}",
                "fix the config",
            )
        if any(n % self.downsample for n in self.model_shape[:2]):
            raise InputError(
                f"autoencoder config: model_shape {self.model_shape} in-plane sizes must divide by {self.downsample}",
                "fix the config",
            )
        contrasts = tuple(parse_contrast(c).value for c in self.contrasts)
        if not contrasts:
            raise InputError("autoencoder config: no contrasts", "list the contrasts it is trained on")
        object.__setattr__(self, "contrasts", contrasts)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.model_shape[0] // self.downsample, self.model_shape[1] // self.downsample)

    @property
    def contrast_list(self) -> list[Contrast]:
        return [Contrast(c) for c in self.contrasts]

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        return cls(**_strict(cls, data, "cola-diff autoencoder config"))


@dataclass(frozen=True)
class CoLaDiffConfig:
    """The conditioned latent diffusion model (Jiang et al. 2023) mapping any subset of ``inputs`` to ``target``.

    Attributes:
        target, inputs: what it synthesizes from what (any non-empty subset at inference).
        autoencoder: the (frozen) autoencoder's config; its weights are embedded in the checkpoint.
        autoencoder_sha256: sha256 of the autoencoder checkpoint's weights file it was trained with.
        spacing_mm, model_shape: model grid (the autoencoder's).
        input_dropout: training probability of hiding each input (at least one is kept).
        batch_size: slices per training step.
        channels, num_res_blocks: latent UNet levels and residual blocks per level.
        attention_downsample: latent downsampling factors whose levels get transformer blocks (the
            paper's attention resolutions 32, 16, 8 at 256 px are factors 8, 16, 32 of the image,
            i.e. 2, 4, 8 of an f=4 latent); the bottleneck always has one.
        heads, transformer_depth, context_channels: transformer blocks and condition tokens.
        block: ``"bottleneck"`` (1x1-3x3-1x1 residual, the paper) or ``"plain"`` (two 3x3).
        bottleneck_ratio: width reduction inside bottleneck blocks.
        large_kernel_fusion: 5x5 and 7x7 convolutions fused by AFF in the down path.
        dropout: dropout in residual blocks.
        filtering: similar cooperative filtering of every skip feature (eq. 4).
        wavelet, wavelet_levels: the DWT of the filtering.
        block_size, block_stride, group_size: block matching of the filtering.
        auto_weight: auto-weight adaptation of the conditions (eqs. 7-10).
        concat_conditions: also concatenate the (weighted) conditions to the network input.
        structural_guidance: tissue masks and densities as extra conditions.
        guidance_maps: which maps (see :data:`GUIDANCE_MAPS`).
        segmentation: tissue segmentation method (``auto``, ``fsl``, ``embedded``).
        guidance_subsets: ``"each"``: training caches maps for every subset of inputs it shows the
            network (as at inference, masks come from the available inputs only); ``"all"``: maps from
            all inputs of a subject (cheaper).
        num_train_timesteps, beta_schedule, beta_start, beta_end: the noise schedule.
        learned_variance: learned-range variance head and the KL term (eqs. 5-6).
        kl_weight: weight of the KL term relative to L_eps (1: improved DDPM's L_hybrid, see losses).
        sampler, sampling_steps, eta: default sampler (``ddim``, ``fast`` or ``ddpm``) and steps.
        validation_steps, validation_slices: DDIM steps and slices per subject for validation.
        distillation: set only for a progressively distilled student (``mrsynth train distill``): its
            teacher's sha256 and step count and its own grid; the network then predicts v, not eps,
            in the same output channels, and samples only with ``sampler = "distilled"``.
    """

    target: str = "FLAIR"
    inputs: tuple[str, ...] = ("T1", "T1ce", "T2")
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    autoencoder_sha256: str = ""
    spacing_mm: float = 2.0
    model_shape: tuple[int, int, int] = (80, 96, 80)
    input_dropout: float = 0.3
    batch_size: int = 8
    channels: tuple[int, ...] = (64, 128, 128)
    num_res_blocks: int = 1
    attention_downsample: tuple[int, ...] = (2, 4)
    heads: int = 4
    transformer_depth: int = 1
    context_channels: int = 64
    block: str = "bottleneck"
    bottleneck_ratio: int = 2
    large_kernel_fusion: bool = True
    dropout: float = 0.0
    filtering: bool = True
    wavelet: str = "haar"
    wavelet_levels: int = 1
    block_size: int = 3
    block_stride: int = 2
    group_size: int = 8
    auto_weight: bool = True
    concat_conditions: bool = True
    structural_guidance: bool = True
    guidance_maps: tuple[str, ...] = GUIDANCE_MAPS
    segmentation: str = "auto"
    guidance_subsets: str = "each"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    learned_variance: bool = True
    kl_weight: float = 1.0
    sampler: str = "ddim"
    sampling_steps: int = 50
    eta: float = 0.0
    validation_steps: int = 10
    validation_slices: int = 16
    distillation: DistillationRecord | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _tuples(self)
        if isinstance(self.distillation, dict):
            object.__setattr__(self, "distillation", DistillationRecord.from_dict(self.distillation))
        if isinstance(self.autoencoder, dict):
            object.__setattr__(self, "autoencoder", AutoencoderConfig.from_dict(self.autoencoder))
        target = parse_contrast(self.target)
        inputs = [parse_contrast(c) for c in self.inputs]
        if target in inputs:
            raise InputError(f"the target {target} is also an input", "remove it from the inputs")
        if not inputs:
            raise InputError("a cola-diff model needs at least one input contrast", "give --inputs")
        if len(set(inputs)) != len(inputs):
            raise InputError(f"cola-diff config: repeated inputs {self.inputs}", "list each input once")
        object.__setattr__(self, "target", target.value)
        object.__setattr__(self, "inputs", tuple(c.value for c in inputs))
        checks = [
            (self.block in ("bottleneck", "plain"), f"block '{self.block}' is not bottleneck or plain"),
            (
                self.guidance_subsets in ("each", "all"),
                f"guidance_subsets '{self.guidance_subsets}' is not each or all",
            ),
            (
                self.segmentation in ("auto", "fsl", "embedded"),
                f"segmentation '{self.segmentation}' is not auto, fsl or embedded",
            ),
            (
                set(self.guidance_maps) <= set(GUIDANCE_MAPS),
                f"guidance_maps {self.guidance_maps} outside {GUIDANCE_MAPS}",
            ),
            (self.sampler in SAMPLERS, f"sampler '{self.sampler}' is not one of {SAMPLERS}"),
            (
                (self.sampler == "distilled") == (self.distillation is not None),
                "sampler 'distilled' goes with a distillation record, and only with one",
            ),
            (0.0 <= self.input_dropout < 1.0, "input_dropout must be in [0, 1)"),
            (
                all(d >= 1 and (d & (d - 1)) == 0 for d in self.attention_downsample),
                "attention_downsample must be powers of 2",
            ),
            (
                all(c % self.heads == 0 for c in self.channels),
                f"channels {self.channels} must divide by heads {self.heads}",
            ),
            (
                self.wavelet_levels >= 1 and self.group_size >= 1 and self.block_size >= 1,
                "filtering sizes must be >= 1",
            ),
            (
                tuple(self.model_shape) == tuple(self.autoencoder.model_shape)
                and self.spacing_mm == self.autoencoder.spacing_mm,
                "model grid differs from the autoencoder's (spacing_mm, model_shape)",
            ),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(f"cola-diff config: {problem}", "fix the config")

    @property
    def target_contrast(self) -> Contrast:
        return Contrast(self.target)

    @property
    def input_contrasts(self) -> list[Contrast]:
        return [Contrast(c) for c in self.inputs]

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def active_guidance_maps(self) -> tuple[str, ...]:
        return self.guidance_maps if self.structural_guidance else ()

    @property
    def condition_channels(self) -> int:
        """Channels of ``y``: every input's latent (zero when absent) and the guidance maps."""
        return len(self.inputs) * self.latent_channels + len(self.active_guidance_maps)

    def to_dict(self) -> dict[str, Any]:
        data = _plain(asdict(self))
        if data["distillation"] is None:  # absent for ordinary models (TOML has no null)
            del data["distillation"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoLaDiffConfig:
        values = _strict(cls, data, "cola-diff config")
        if "autoencoder" in values:
            values["autoencoder"] = AutoencoderConfig.from_dict(dict(values["autoencoder"]))
        return cls(**values)

    def ablated(self, names: list[str]) -> CoLaDiffConfig:
        """This config with the named components removed (:data:`ABLATIONS`)."""
        changes: dict[str, Any] = {}
        for name in names:
            if name not in ABLATIONS:
                raise InputError(f"unknown ablation '{name}'", f"choose among {', '.join(ABLATIONS)}")
            changes.update(ABLATIONS[name])
        return replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """A config file's four tables."""

    name: str
    autoencoder: AutoencoderConfig
    autoencoder_training: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]


def preset_path(name_or_path: str) -> Path:
    """``cpu``/``paper`` (the packaged presets) or a path to a TOML file of the same layout."""
    return presets.preset_path("cola-diff", _CONFIGS, name_or_path)


def load_preset(name_or_path: str = "cpu") -> Preset:
    """Read and validate a preset (unknown keys in any table are errors)."""
    path, data = presets.read_preset(
        "cola-diff", _CONFIGS, name_or_path, {"autoencoder", "autoencoder_training", "model", "training"},
        ["autoencoder_training", "training"],
    )
    model = dict(data.get("model", {}))
    bad = set(model) & {"target", "inputs", "autoencoder", "autoencoder_sha256", "spacing_mm", "model_shape"}
    if bad:
        raise InputError(
            f"cola-diff config {path} [model] sets {sorted(bad)}",
            "target/inputs come from the command line, the grid from [autoencoder]",
        )
    _strict(CoLaDiffConfig, model, f"cola-diff config {path} [model]")
    return Preset(
        name=path.stem,
        autoencoder=AutoencoderConfig.from_dict(dict(data.get("autoencoder", {}))),
        autoencoder_training=dict(data.get("autoencoder_training", {})),
        model=model,
        training=dict(data.get("training", {})),
    )
