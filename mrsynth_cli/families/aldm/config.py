"""Hyperparameters of ALDM: the 3D VQ-GAN, the MS-SPADE translator and the 3D latent diffusion model.

One frozen dataclass, :class:`AldmConfig`, validated strictly (unknown keys are errors) and saved resolved
with every stage's checkpoint. Field prefixes name the part: ``ae_*`` the autoencoder (and its
discriminator), ``spade_*`` the MS-SPADE block, ``ldm_*`` the latent UNet. Two presets ship in
``configs/``: ``paper.toml`` (the supplement's Tables A-C at 1 mm, for a GPU) and ``cpu.toml`` (2 mm,
80x96x80, the CPU-scale recipe). A preset has the table ``[model]`` (:class:`AldmConfig` fields) and one
loop-settings table per stage: ``[vqgan_training]``, ``[spade_training]``, ``[ldm_training]``.

The paper's Table 3 ablations are switches (:data:`ABLATIONS`): ``diffusion-only`` (a: no Palette
condition, no SPADE), ``palette`` (b: the source latent concatenated, no SPADE), ``spade-only`` (c: the
SPADE output decoded, no diffusion) and ``kl`` (d: KL-regularised instead of vector-quantised latents).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError
from mrsynth_cli.families import presets
from mrsynth_cli.io.contrasts import Contrast, parse_contrast

__all__ = ["ABLATIONS", "SAMPLERS", "STAGES", "AldmConfig", "Preset", "load_preset", "preset_path"]

_CONFIGS = Path(__file__).resolve().parent / "configs"

SCHEMA_VERSION = 1
SAMPLERS = ("ddim", "fast", "ddpm")
#: The training stages, in order, and the checkpoint family each writes.
STAGES = {"vqgan": "aldm-vqgan", "spade": "aldm-spade", "ldm": "aldm"}
#: ``--ablate`` names -> config switches (the paper's Table 3).
ABLATIONS: dict[str, dict[str, Any]] = {
    "diffusion-only": {"condition": "none"},
    "palette": {"condition": "source"},
    "spade-only": {"use_diffusion": False},
    "kl": {"ae_regularisation": "kl"},
}


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class AldmConfig:
    """The whole ALDM model: what every stage builds and every checkpoint records.

    Attributes:
        contrasts: the modalities it translates between (every one is a source and a target).
        spacing_mm, model_shape: the model grid (whole brain volumes, brain-centred crop/pad; no patches).
        spatial_dims: 3 (the paper: whole volumes; passed to every network).
        ae_channels: encoder/decoder channels per level; downsampling ``2 ** (levels - 1)`` (paper: 4).
        ae_num_res_blocks, ae_norm_num_groups: residual blocks per level and GroupNorm groups.
        ae_latent_channels: latent/codebook embedding dimension (paper Table A: 3).
        ae_regularisation: ``vq`` (vector quantisation, the paper) or ``kl`` (ablation d).
        ae_num_embeddings: codebook size (paper: 8192).
        ae_commitment: beta of the commitment loss ``beta |z_e - sg(e)|^2`` (VQ-VAE: 0.25).
        ae_codebook_update: ``ema`` (exponential moving averages of assigned encoder outputs, VQ-VAE
            appendix) or ``loss`` (the codebook loss ``|sg(z_e) - e|^2`` by gradient).
        ae_codebook_decay: EMA decay of the codebook.
        ae_dead_code_threshold: in ``ema`` mode, codes whose EMA usage falls below this are restarted
            on the encoder outputs quantised worst in the batch (0: never).
        ae_kl_weight: weight of the KL term in ``kl`` mode.
        ae_adversarial_weight, ae_adversarial_start: the 3D patch-adversarial term (0: off).
        ae_discriminator_channels, ae_discriminator_layers: MONAI ``PatchDiscriminator`` size.
        ae_cycle_weight: weight of the translation + cycle-consistency terms through the SPADE path
            in the vqgan stage (0: off, and they are not computed).
        spade_channels: hidden channels of the MS-SPADE stream (paper Table B: 128/256).
        spade_res_blocks, spade_blocks: plain residual blocks, then SPADE residual blocks (paper: 2, 4).
        spade_hidden: hidden channels of each SPADE's gamma/beta network.
        condition: the UNet's concatenated condition: ``spade`` (target-like latent, the paper),
            ``source`` (the source latent, Palette alone, ablation b) or ``none`` (ablation a).
        use_diffusion: ``False``: decode the SPADE output directly (ablation c).
        ldm_channels, ldm_attention_levels, ldm_num_res_blocks, ldm_num_head_channels,
            ldm_norm_num_groups: the MONAI ``DiffusionModelUNet`` (cross-attention on the one-hot target).
        num_train_timesteps, beta_schedule, beta_start, beta_end: the noise schedule (T = 1000,
            scaled-linear 0.0015 -> 0.0195).
        quantize_samples: snap sampled latents to the codebook before decoding (LDM's VQ decode).
        sampler, sampling_steps, eta: default sampler and steps.
    """

    contrasts: tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")
    spacing_mm: float = 2.0
    model_shape: tuple[int, int, int] = (80, 96, 80)
    spatial_dims: int = 3
    ae_channels: tuple[int, ...] = (16, 32, 32)
    ae_num_res_blocks: int = 1
    ae_norm_num_groups: int = 8
    ae_latent_channels: int = 3
    ae_regularisation: str = "vq"
    ae_num_embeddings: int = 512
    ae_commitment: float = 0.25
    ae_codebook_update: str = "ema"
    ae_codebook_decay: float = 0.99
    ae_dead_code_threshold: float = 0.01
    ae_kl_weight: float = 1e-6
    ae_adversarial_weight: float = 0.0
    ae_adversarial_start: int = 0
    ae_discriminator_channels: int = 16
    ae_discriminator_layers: int = 3
    ae_cycle_weight: float = 0.5
    spade_channels: int = 64
    spade_res_blocks: int = 1
    spade_blocks: int = 2
    spade_hidden: int = 32
    condition: str = "spade"
    use_diffusion: bool = True
    ldm_channels: tuple[int, ...] = (64, 128, 128)
    ldm_attention_levels: tuple[bool, ...] = (False, True, True)
    ldm_num_res_blocks: int = 1
    ldm_num_head_channels: int = 32
    ldm_norm_num_groups: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    quantize_samples: bool = True
    sampler: str = "ddim"
    sampling_steps: int = 50
    eta: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        contrasts = tuple(parse_contrast(c).value for c in self.contrasts)
        object.__setattr__(self, "contrasts", contrasts)
        object.__setattr__(self, "model_shape", tuple(int(v) for v in self.model_shape))
        checks = [
            (len(contrasts) >= 2 and len(set(contrasts)) == len(contrasts), "contrasts must be >= 2 distinct names"),
            (self.spatial_dims == 3, "spatial_dims must be 3 (whole volumes, as the paper)"),
            (len(self.model_shape) == 3, "model_shape must be three sizes"),
            (
                all(n % self.downsample == 0 for n in self.model_shape[: self.spatial_dims]),
                f"model_shape {self.model_shape} must divide by the downsampling {self.downsample}",
            ),
            (
                all(c % self.ae_norm_num_groups == 0 for c in self.ae_channels),
                f"ae_channels {self.ae_channels} must divide by ae_norm_num_groups {self.ae_norm_num_groups}",
            ),
            (self.ae_regularisation in ("vq", "kl"), f"ae_regularisation '{self.ae_regularisation}' is not vq or kl"),
            (
                self.ae_codebook_update in ("ema", "loss"),
                f"ae_codebook_update '{self.ae_codebook_update}' is not ema or loss",
            ),
            (0.0 <= self.ae_codebook_decay < 1.0, "ae_codebook_decay must be in [0, 1)"),
            (
                self.condition in ("spade", "source", "none"),
                f"condition '{self.condition}' is not spade, source or none",
            ),
            (
                self.use_diffusion or self.condition == "spade",
                "use_diffusion = false (SPADE only) needs condition spade",
            ),
            (len(self.ldm_attention_levels) == len(self.ldm_channels), "ldm_attention_levels needs one flag per level"),
            (
                all(c % self.ldm_norm_num_groups == 0 for c in self.ldm_channels),
                f"ldm_channels {self.ldm_channels} must divide by ldm_norm_num_groups {self.ldm_norm_num_groups}",
            ),
            (self.sampler in SAMPLERS, f"sampler '{self.sampler}' is not one of {SAMPLERS}"),
            (self.spade_blocks >= 1 or not self.uses_spade, "spade_blocks must be >= 1"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(f"aldm config: {problem}", "fix the config")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ae_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(n // self.downsample for n in self.model_shape[: self.spatial_dims])

    @property
    def contrast_list(self) -> list[Contrast]:
        return [Contrast(c) for c in self.contrasts]

    @property
    def uses_spade(self) -> bool:
        """Whether the model's synthesis path runs the MS-SPADE block (ablations a and b do not)."""
        return self.condition == "spade"

    def target_index(self, contrast: Contrast | str) -> int:
        value = parse_contrast(contrast).value if isinstance(contrast, str) else contrast.value
        if value not in self.contrasts:
            raise InputError(
                f"this aldm model does not know {value}", f"it translates between {', '.join(self.contrasts)}"
            )
        return self.contrasts.index(value)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AldmConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"aldm config has unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
        if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise InputError(f"aldm config schema_version {data.get('schema_version')}", f"expected {SCHEMA_VERSION}")
        return cls(**data)

    def ablated(self, names: list[str]) -> AldmConfig:
        """This config with the paper's Table 3 switches of ``names`` (:data:`ABLATIONS`) applied."""
        changes: dict[str, Any] = {}
        for name in names:
            if name not in ABLATIONS:
                raise InputError(f"unknown aldm ablation '{name}'", f"choose among {', '.join(ABLATIONS)}")
            changes.update(ABLATIONS[name])
        return replace(self, **changes)

    def autoencoder_dict(self) -> dict[str, Any]:
        """The fields that define the autoencoder and MS-SPADE (later stages must match the earlier ones)."""
        return {k: v for k, v in self.to_dict().items() if k.startswith(("ae_", "spade_")) or k in (
            "contrasts", "spacing_mm", "model_shape", "spatial_dims")}


@dataclass(frozen=True)
class Preset:
    name: str
    model: dict[str, Any]
    training: dict[str, dict[str, Any]]  # stage -> loop settings


def preset_path(name_or_path: str) -> Path:
    """``cpu``/``paper`` (the packaged presets) or a path to a TOML file of the same layout."""
    return presets.preset_path("aldm", _CONFIGS, name_or_path)


def load_preset(name_or_path: str = "cpu") -> Preset:
    """Read and validate a preset (unknown tables and keys are errors)."""
    tables = {"model", *(f"{s}_training" for s in STAGES)}
    path, data = presets.read_preset("aldm", _CONFIGS, name_or_path, tables, [f"{s}_training" for s in STAGES])
    training = {stage: dict(data.get(f"{stage}_training", {})) for stage in STAGES}
    model = dict(data.get("model", {}))
    AldmConfig.from_dict(model)  # validate now: a bad preset fails before any data is read
    return Preset(name=path.stem, model=model, training=training)
