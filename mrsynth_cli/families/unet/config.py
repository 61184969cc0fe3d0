"""Hyperparameters of the ``unet`` baseline, frozen, validated and saved with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast, parse_contrast

__all__ = ["UNetConfig"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class UNetConfig:
    """A 2D regression UNet mapping any subset of ``inputs`` to ``target``, slice by slice.

    Each input contributes two channels: its scaled intensities (zero when absent) and a constant
    presence flag, so one network serves every subset of the inputs.

    Attributes:
        target: contrast the network synthesizes.
        inputs: contrasts it may receive (any non-empty subset at inference).
        channels, strides, num_res_units: MONAI ``UNet`` layout.
        spacing_mm: isotropic voxel size of the model grid.
        model_shape: model grid (canonical RAS) the brain is centred in; slices are axial.
        input_dropout: training probability of hiding each input (at least one is kept).
        batch_size: slices per training step (optimiser settings live in ``TrainSettings``).
    """

    target: str = "FLAIR"
    inputs: tuple[str, ...] = ("T1", "T1ce", "T2")
    spatial_dims: int = 2
    channels: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    spacing_mm: float = 1.5
    model_shape: tuple[int, int, int] = (112, 128, 112)
    input_dropout: float = 0.3
    batch_size: int = 16
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        target = parse_contrast(self.target)
        inputs = [parse_contrast(c) for c in self.inputs]
        if target in inputs:
            raise InputError(f"the target {target} is also an input", "remove it from the inputs")
        if not inputs:
            raise InputError("a unet model needs at least one input contrast", "give --inputs")
        if len(self.strides) != len(self.channels) - 1:
            raise InputError("unet config: len(strides) must be len(channels) - 1", "fix the config")
        factor = 1
        for s in self.strides:
            factor *= s
        if any(n % factor for n in self.model_shape[:2]):
            raise InputError(
                f"unet config: model_shape {self.model_shape} in-plane sizes must divide by {factor}", "fix the config"
            )
        object.__setattr__(self, "target", target.value)
        object.__setattr__(self, "inputs", tuple(c.value for c in inputs))

    @property
    def target_contrast(self) -> Contrast:
        return Contrast(self.target)

    @property
    def input_contrasts(self) -> list[Contrast]:
        return [Contrast(c) for c in self.inputs]

    @property
    def in_channels(self) -> int:
        return 2 * len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unet config has unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
        if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise InputError(f"unet config schema_version {data.get('schema_version')}", f"expected {SCHEMA_VERSION}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)
