"""Hyperparameters of MMDM, frozen, validated strictly (unknown keys are errors), saved with every checkpoint.

Two presets ship in ``configs/``: ``paper.toml`` (the paper's settings, for a GPU) and ``cpu.toml``
(the CPU-scale recipe of the shipped weights). Each has a ``[model]`` table (:class:`MMDMConfig`
fields other than target and inputs) and a ``[training]`` table
(:class:`~mrsynth_cli.training.loop.TrainSettings` fields).

``variant`` selects the paper's model or the two ablation baselines of the benchmark:

* ``"mmdm"``: one bridge and one Restormer-UNet per input (each conditioned on its own source),
  fused by the cross-modal dynamic fusion (the paper);
* ``"bbdm"``: a single bridge from the one input (BBDM with the source slice as condition);
* ``"concat"``: a single bridge from the first input, its network conditioned on all inputs
  concatenated (the "naive concatenation" the paper argues against).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError
from mrsynth_cli.families import presets
from mrsynth_cli.io.contrasts import Contrast, parse_contrast

__all__ = ["MMDMConfig", "Preset", "load_preset", "preset_path", "VARIANTS", "SAMPLERS"]

_CONFIGS = Path(__file__).resolve().parent / "configs"

SCHEMA_VERSION = 1
VARIANTS = ("mmdm", "bbdm", "concat")
SAMPLERS = ("bridge",)


@dataclass(frozen=True)
class MMDMConfig:
    """MMDM: ``inputs`` -> ``target`` (TOF-MRA) through one Brownian bridge per input.

    Attributes:
        target, inputs: what it synthesizes from what (the paper: T1, T2, FLAIR -> TOF).
        variant: ``mmdm``, ``bbdm`` or ``concat`` (see the module docstring).
        spacing_mm, model_shape: the model grid (canonical RAS, brain-centred crop/pad; axial = last axis).
        slices: adjacent axial slices per 2.5D window (channels; the paper's code uses 5).
        window_stride: axial step between inference windows (1: every slice is covered ``slices``
            times, as the paper's code; larger: fewer windows, still overlapping while < ``slices``).
        batch_size: windows per training step.
        channels: Restormer-UNet widths per level (each level halves the in-plane size).
        blocks: MDTA + GDFN transformer blocks per level.
        heads: attention heads of the MDTA blocks per level.
        ffn_expansion: GDFN hidden-width factor (Restormer: 2.66).
        time_channels: width of the shared time embedding.
        fusion_channels, fusion_blocks: the fusion network's Restormer-UNet widths and blocks.
        num_train_timesteps, m_min, m_max, max_var: the bridge schedule
            (:class:`~mrsynth_cli.sampling.bridge.BridgeSchedule`).
        mip_loss: add the Gumbel-softmax cumulative MIP loss (eqs. 5-7); off: MSE only.
        mip_temperature: tau of eq. 6.
        gumbel_scale: scale of the Gumbel noise in eq. 6 (1: the paper; 0: a plain softmax).
        noise_adaptive: weight the four losses by eqs. 8-11 (off: their plain sum, the paper's
            ablation baseline "MMDM").
        sampling_steps, eta: default bridge steps and posterior noise scale (1: eq. 2).
        validation_steps, validation_windows: bridge steps and windows per subject for validation.
    """

    target: str = "TOF"
    inputs: tuple[str, ...] = ("T1", "T2", "FLAIR")
    variant: str = "mmdm"
    spacing_mm: float = 2.0
    model_shape: tuple[int, int, int] = (80, 96, 80)
    slices: int = 5
    window_stride: int = 1
    batch_size: int = 4
    channels: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (1, 1, 1)
    heads: tuple[int, ...] = (1, 2, 4)
    ffn_expansion: float = 2.66
    time_channels: int = 64
    fusion_channels: tuple[int, ...] = (16, 32)
    fusion_blocks: tuple[int, ...] = (1, 1)
    num_train_timesteps: int = 1000
    m_min: float = 0.001
    m_max: float = 0.999
    max_var: float = 1.0
    mip_loss: bool = True
    mip_temperature: float = 0.75
    gumbel_scale: float = 1.0
    noise_adaptive: bool = True
    sampling_steps: int = 10
    eta: float = 1.0
    validation_steps: int = 5
    validation_windows: int = 4
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        target = parse_contrast(self.target)
        inputs = [parse_contrast(c) for c in self.inputs]
        if target in inputs:
            raise InputError(f"mmdm config: the target {target} is also an input", "remove it from the inputs")
        if not inputs or len(set(inputs)) != len(inputs):
            raise InputError(f"mmdm config: inputs {self.inputs} are empty or repeated", "list each input once")
        object.__setattr__(self, "target", target.value)
        object.__setattr__(self, "inputs", tuple(c.value for c in inputs))
        factor = 2 ** (len(self.channels) - 1)
        checks = [
            (self.variant in VARIANTS, f"variant '{self.variant}' is not one of {VARIANTS}"),
            (self.variant != "bbdm" or len(inputs) == 1, "variant bbdm bridges from exactly one input"),
            (self.variant != "mmdm" or len(inputs) >= 2, "variant mmdm needs at least two inputs to fuse"),
            (self.slices >= 1, "slices must be >= 1"),
            (1 <= self.window_stride <= self.slices, "window_stride must be in [1, slices]"),
            (
                len(self.blocks) == len(self.channels) == len(self.heads),
                "channels, blocks, heads need one entry per level",
            ),
            (
                all(c % h == 0 for c, h in zip(self.channels, self.heads, strict=False)),
                "every channel count must divide by its heads",
            ),
            (len(self.fusion_blocks) == len(self.fusion_channels) >= 1, "fusion_channels and fusion_blocks differ"),
            (all(n % factor == 0 for n in self.model_shape[:2]), f"model_shape in-plane sizes must divide by {factor}"),
            (
                len(self.model_shape) == 3 and self.model_shape[2] >= self.slices,
                "model_shape needs >= slices axial slices",
            ),
            (self.mip_temperature > 0, "mip_temperature must be > 0"),
            (self.gumbel_scale >= 0, "gumbel_scale must be >= 0"),
            (0.0 <= self.eta <= 1.0, "eta must be in [0, 1]"),
            (1 <= self.sampling_steps <= self.num_train_timesteps, "sampling_steps must be in [1, T]"),
            (1 <= self.validation_steps <= self.num_train_timesteps, "validation_steps must be in [1, T]"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(f"mmdm config: {problem}", "fix the config")

    @property
    def target_contrast(self) -> Contrast:
        return Contrast(self.target)

    @property
    def input_contrasts(self) -> list[Contrast]:
        return [Contrast(c) for c in self.inputs]

    @property
    def path_contrasts(self) -> list[Contrast]:
        """The bridges' sources: every input for ``mmdm``, the first input otherwise."""
        return self.input_contrasts if self.variant == "mmdm" else self.input_contrasts[:1]

    @property
    def condition_contrasts(self) -> dict[Contrast, list[Contrast]]:
        """Each path's condition: its own source, or every input for ``concat``."""
        if self.variant == "concat":
            return {c: self.input_contrasts for c in self.path_contrasts}
        return {c: [c] for c in self.path_contrasts}

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MMDMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"mmdm config has unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
        if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise InputError(f"mmdm config schema_version {data.get('schema_version')}", f"expected {SCHEMA_VERSION}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class Preset:
    """A preset file's two tables."""

    name: str
    model: dict[str, Any]
    training: dict[str, Any]


def preset_path(name_or_path: str) -> Path:
    """``cpu``/``paper`` (the packaged presets) or a path to a TOML file of the same layout."""
    return presets.preset_path("mmdm", _CONFIGS, name_or_path)


def load_preset(name_or_path: str = "cpu") -> Preset:
    """Read and validate a preset (unknown tables or keys are errors)."""
    path, data = presets.read_preset("mmdm", _CONFIGS, name_or_path, {"model", "training"}, ["training"])
    model = dict(data.get("model", {}))
    if set(model) & {"target", "inputs"}:
        raise InputError(f"mmdm config {path} [model] sets target/inputs", "they come from the command line")
    known = {f.name for f in fields(MMDMConfig)}
    if set(model) - known:
        raise InputError(
            f"mmdm config {path} [model] has unknown keys {sorted(set(model) - known)}", f"known: {sorted(known)}"
        )
    MMDMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})  # validate now
    return Preset(name=path.stem, model=model, training=dict(data.get("training", {})))
