"""Hyperparameters of MRDiff (Shin et al., MICCAI 2025): frozen, validated strictly, saved with every checkpoint.

Two presets ship in ``configs/``: ``paper.toml`` (the paper's and its released training script's
numbers, for a GPU) and ``cpu.toml`` (the CPU-scale recipe). Each has a ``[model]`` table
(:class:`MRDiffConfig` fields other than target and inputs) and a ``[training]`` table
(:class:`~mrsynth_cli.training.loop.TrainSettings` fields).

The components of the paper's Fig. 4 ablation are switches: ``physics = false`` (L_D without the
MR-physics modulation M), ``consistency = false`` (no L_CCT).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError
from mrsynth_cli.families import presets
from mrsynth_cli.io.contrasts import Contrast, parse_contrast

__all__ = ["ABLATIONS", "SAMPLERS", "MRDiffConfig", "Preset", "load_preset", "preset_path"]

_CONFIGS = Path(__file__).resolve().parent / "configs"

SCHEMA_VERSION = 1
SAMPLERS = ("ddim", "ddpm")
#: ``--ablate`` names -> the switches they turn off (the paper's Fig. 4).
ABLATIONS: dict[str, dict[str, Any]] = {
    "physics": {"physics": False},
    "consistency": {"consistency": False},
}


@dataclass(frozen=True)
class MRDiffConfig:
    """An MRDiff model synthesizing ``target`` from all of ``inputs`` (each with its TR/TE, and TI if any).

    Attributes:
        target, inputs: what it synthesizes from what. MRDiff needs every input: the physics module
            models each condition's signal from its own acquisition parameters (the paper's ``y`` is
            a fixed pair of contrasts).
        spacing_mm, model_shape: the model grid (axial slices of ``model_shape[:2]``).
        batch_size: slices per training step (before the ``consistency_copies`` copies).
        channels: encoder channels per level, at half the slice size (after the DWT), then halving.
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention after the residual blocks of each level (and in the middle
            block when the last level has it).
        heads: attention heads.
        dropout: dropout in residual blocks.
        map_channels: channels of each latent quantitative map (T1, T2, S0) of eq. 5.
        t1_unit_s, t2_unit_s: the latent maps are ``softplus(.) * unit`` in seconds, so that at
            initialisation they sit near brain tissue values (T1 ~ 1 s, T2 ~ 0.1 s) and TR/T1,
            TE/T2 are O(1) (the released code divides TR by 3 s and TE by 2 s for the same reason).
        physics: decode ``y`` from the MR-physics-modulated features (eqs. 7-8); off: from ``e_t``.
        decoder_skips: the condition decoder D also receives the encoder's skip connections. Off by
            default: with them D could copy ``y`` from the first skip and the physics bottleneck
            would regularise nothing (eq. 8 writes ``D(M(E(.)))``).
        consistency: the self-content consistency loss (eqs. 9-10).
        consistency_copies: N, perturbed copies of ``x_t`` per sample (same t, independent noise).
        lambda_g, lambda_d, lambda_cct: the weights of eq. 11.
        num_train_timesteps, beta_schedule, beta_start, beta_end: the noise schedule.
        sampler, sampling_steps, eta: default sampler (``ddim`` or ``ddpm``), steps and DDIM eta.
        validation_steps, validation_slices: sampling steps and slices per subject for validation.
        training_acquisition: per input, the median (TR, TE, TI) in seconds of the training subjects
            (TI 0: none), filled in by training. The generator never sees TR/TE (Fig. 1: only the
            condition decoder reads the physics features), so at synthesis they only serve to warn
            when an input's protocol is far from the one the physics regularisation was trained on.
    """

    target: str = "T2"
    inputs: tuple[str, ...] = ("T1", "PD")
    spacing_mm: float = 2.0
    model_shape: tuple[int, int, int] = (80, 96, 80)
    batch_size: int = 8
    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    heads: int = 4
    dropout: float = 0.0
    map_channels: int = 8
    t1_unit_s: float = 1.0
    t2_unit_s: float = 0.1
    physics: bool = True
    decoder_skips: bool = False
    consistency: bool = True
    consistency_copies: int = 3
    lambda_g: float = 1.0
    lambda_d: float = 1.0
    lambda_cct: float = 0.01
    num_train_timesteps: int = 1000
    beta_schedule: str = "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sampler: str = "ddim"
    sampling_steps: int = 50
    eta: float = 0.0
    validation_steps: int = 10
    validation_slices: int = 8
    training_acquisition: tuple[tuple[float, float, float], ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        target = parse_contrast(self.target)
        inputs = [parse_contrast(c) for c in self.inputs]
        if target in inputs:
            raise InputError(f"the target {target} is also an input", "remove it from the inputs")
        if not inputs:
            raise InputError("an mrdiff model needs at least one input contrast", "give --inputs")
        if len(set(inputs)) != len(inputs):
            raise InputError(f"mrdiff config: repeated inputs {self.inputs}", "list each input once")
        if Contrast.TOF in inputs or target is Contrast.TOF:
            raise InputError("mrdiff models spin-echo/inversion-recovery contrasts, not TOF", "leave TOF out")
        object.__setattr__(self, "target", target.value)
        object.__setattr__(self, "inputs", tuple(c.value for c in inputs))
        rows = tuple(tuple(map(float, row)) for row in self.training_acquisition)
        object.__setattr__(self, "training_acquisition", rows)
        factor = 2 ** len(self.channels)  # the DWT halves, then len(channels) - 1 downsamplings
        checks = [
            (len(self.model_shape) == 3, "model_shape needs three sizes"),
            (all(n % factor == 0 for n in self.model_shape[:2]), f"model_shape in-plane sizes must divide by {factor}"),
            (len(self.attention_levels) == len(self.channels), "attention_levels needs one flag per channel level"),
            (self.channels[-1] % 4 == 0, "the last channel count must divide by 4 (the IWT of eq. 5 takes 4 bands)"),
            (all(c % self.heads == 0 for c in self.channels), f"channels must divide by heads {self.heads}"),
            (self.map_channels >= 1 and self.num_res_blocks >= 1, "map_channels and num_res_blocks must be >= 1"),
            (self.t1_unit_s > 0 and self.t2_unit_s > 0, "t1_unit_s and t2_unit_s must be > 0"),
            (self.consistency_copies >= 2, "consistency_copies (N) must be >= 2"),
            (min(self.lambda_g, self.lambda_d, self.lambda_cct) >= 0, "lambdas must be >= 0"),
            (self.sampler in SAMPLERS, f"sampler '{self.sampler}' is not one of {SAMPLERS}"),
            (0.0 <= self.eta <= 1.0, "eta must be in [0, 1]"),
            (self.sampling_steps >= 1 and self.validation_steps >= 1, "sampling steps must be >= 1"),
            (
                len(self.training_acquisition) in (0, len(inputs))
                and all(len(row) == 3 for row in self.training_acquisition),
                "training_acquisition needs one (TR, TE, TI) per input",
            ),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(f"mrdiff config: {problem}", "fix the config")

    @property
    def target_contrast(self) -> Contrast:
        return Contrast(self.target)

    @property
    def input_contrasts(self) -> list[Contrast]:
        return [Contrast(c) for c in self.inputs]

    @property
    def copies(self) -> int:
        """Forward passes per sample: N with the consistency loss, else 1."""
        return self.consistency_copies if self.consistency else 1

    def to_dict(self) -> dict[str, Any]:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        data["training_acquisition"] = [list(row) for row in self.training_acquisition]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MRDiffConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"mrdiff config has unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
        if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise InputError(f"mrdiff config schema_version {data.get('schema_version')}", f"expected {SCHEMA_VERSION}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def ablated(self, names: list[str]) -> MRDiffConfig:
        """This config without the named components (:data:`ABLATIONS`)."""
        changes: dict[str, Any] = {}
        for name in names:
            if name not in ABLATIONS:
                raise InputError(f"unknown ablation '{name}'", f"choose among {', '.join(ABLATIONS)}")
            changes.update(ABLATIONS[name])
        return replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """A config file's two tables."""

    name: str
    model: dict[str, Any]
    training: dict[str, Any]


def preset_path(name_or_path: str) -> Path:
    """``cpu``/``paper`` (the packaged presets) or a path to a TOML file of the same layout."""
    return presets.preset_path("mrdiff", _CONFIGS, name_or_path)


def load_preset(name_or_path: str = "cpu") -> Preset:
    """Read and validate a preset (unknown tables or keys are errors)."""
    path, data = presets.read_preset("mrdiff", _CONFIGS, name_or_path, {"model", "training"}, ["training"])
    model = dict(data.get("model", {}))
    if {"target", "inputs", "training_acquisition"} & set(model):
        raise InputError(
            f"mrdiff config {path} [model] sets target/inputs/training_acquisition",
            "target and inputs come from the command line, training_acquisition from the data",
        )
    MRDiffConfig.from_dict(model)  # validates keys and values
    return Preset(name=path.stem, model=model, training=dict(data.get("training", {})))
