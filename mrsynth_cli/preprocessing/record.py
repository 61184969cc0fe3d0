"""An ordered, JSON-serialisable record of every geometry and intensity step, with its inverse.

The record is the contract between preprocessing and the writer: whatever a model sees (canonical
orientation, a brain-centred crop padded to its input size, percentile-scaled intensities), the
record takes the model's output back exactly onto the reference input's native grid.
Steps follow TorchIO's history / nnU-Net's ``properties_dict`` idea: each knows its own inverse.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrsynth_cli.errors import InputError

__all__ = [
    "Reorient",
    "Resample",
    "CropPad",
    "IntensityScale",
    "PreprocessRecord",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Reorient:
    """Reorder/flip axes to the closest canonical (RAS+) orientation (nibabel ``as_closest_canonical``)."""

    ornt: list[list[float]]  # nibabel orientation array: target axis and flip per input axis
    shape_before: list[int]
    op: str = "reorient"

    @classmethod
    def to_canonical(cls, affine: np.ndarray, shape: tuple[int, ...]) -> Reorient:
        ornt = nib.orientations.io_orientation(affine)
        return cls(ornt.tolist(), list(shape))

    def forward(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        return nib.orientations.apply_orientation(array, np.asarray(self.ornt))

    def inverse(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        # ``ornt`` maps the input's axes to RAS; this maps RAS axes back to the input's.
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), np.asarray(self.ornt))
        out = nib.orientations.apply_orientation(array, back)
        if list(out.shape) != self.shape_before:
            raise InputError(f"reorient inverse gave shape {out.shape}, expected {self.shape_before}", "report a bug")
        return out

    def forward_affine(self, affine: np.ndarray) -> np.ndarray:
        ornt = np.asarray(self.ornt)
        return affine @ nib.orientations.inv_ornt_aff(ornt, self.shape_before)


@dataclass(frozen=True)
class Resample:
    """Resample to a new voxel spacing (e.g. 2 mm for CPU-scale 3D models); inverse resamples back."""

    shape_before: list[int]
    shape_after: list[int]
    op: str = "resample"

    @classmethod
    def to_spacing(cls, shape: tuple[int, ...], spacing: tuple[float, ...], new_spacing: tuple[float, ...]) -> Resample:
        after = [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing, strict=True)]
        return cls(list(shape), after)

    @staticmethod
    def _zoom(array: np.ndarray, shape: list[int], order: int) -> np.ndarray:
        factors = [n_out / n_in for n_in, n_out in zip(array.shape, shape, strict=True)]
        # grid_mode=True aligns voxel *edges* (the field of view), as a change of spacing should.
        out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
        return out.astype(array.dtype, copy=False)

    def forward(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        return self._zoom(array, self.shape_after, order)

    def inverse(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        return self._zoom(array, self.shape_before, order)

    def forward_affine(self, affine: np.ndarray) -> np.ndarray:
        scale = np.array(self.shape_before, float) / np.array(self.shape_after, float)
        # Voxel centre i' in the new grid lies at (i' + 0.5) * scale - 0.5 in the old one.
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag(scale)
        matrix[:3, 3] = 0.5 * scale - 0.5
        return affine @ matrix


@dataclass(frozen=True)
class CropPad:
    """Crop to a box and pad to a fixed size: ``start`` may be negative (padding) per axis."""

    shape_before: list[int]
    start: list[int]
    shape_after: list[int]
    op: str = "croppad"

    @classmethod
    def around_mask(cls, mask: np.ndarray, target_shape: tuple[int, ...] | None = None, margin: int = 2) -> CropPad:
        """Centre a box of ``target_shape`` (or the mask's bounding box + margin) on the mask."""
        coords = np.argwhere(mask)
        if coords.size == 0:
            raise InputError("the brain mask is empty", "check the inputs or give a brain mask")
        low, high = coords.min(0), coords.max(0) + 1
        if target_shape is None:
            low, high = low - margin, high + margin
            low = np.maximum(low, 0)
            high = np.minimum(high, mask.shape)
            return cls(list(mask.shape), low.tolist(), (high - low).tolist())
        centre = (low + high) // 2
        size = np.asarray(target_shape)
        start = centre - size // 2
        return cls(list(mask.shape), start.astype(int).tolist(), size.astype(int).tolist())

    def _copy(self, array: np.ndarray, out_shape: list[int], offset: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(out_shape, fill, dtype=array.dtype)
        src_lo = np.maximum(offset, 0)
        src_hi = np.minimum(offset + np.asarray(out_shape), array.shape)
        if np.any(src_hi <= src_lo):
            return out
        dst_lo = src_lo - offset
        dst_hi = dst_lo + (src_hi - src_lo)
        out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))] = array[
            tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
        ]
        return out

    def forward(self, array: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
        return self._copy(array, self.shape_after, np.asarray(self.start), fill)

    def inverse(self, array: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
        return self._copy(array, self.shape_before, -np.asarray(self.start), fill)

    def forward_affine(self, affine: np.ndarray) -> np.ndarray:
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return affine @ shift


@dataclass(frozen=True)
class IntensityScale:
    """Linear map of [low, high] (percentiles inside the brain) to [0, 1], clipped; inverse unscales."""

    low: float
    high: float
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    clip: bool = True
    op: str = "intensity"

    @classmethod
    def from_percentiles(
        cls, array: np.ndarray, mask: np.ndarray, lower: float = 0.5, upper: float = 99.5, clip: bool = True
    ) -> IntensityScale:
        values = array[mask > 0]
        if values.size == 0:
            raise InputError("no voxels inside the brain mask to scale intensities", "check the brain mask")
        low, high = np.percentile(values, [lower, upper])
        if high <= low:
            high = low + 1.0
        return cls(float(low), float(high), lower, upper, clip)

    def forward(self, array: np.ndarray) -> np.ndarray:
        out = (array - self.low) / (self.high - self.low)
        return np.clip(out, 0.0, 1.0).astype(np.float32) if self.clip else out.astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return (array * (self.high - self.low) + self.low).astype(np.float32)


_STEP_TYPES = {"reorient": Reorient, "resample": Resample, "croppad": CropPad}
GeometryStep = Reorient | Resample | CropPad


@dataclass
class PreprocessRecord:
    """Everything needed to go from native inputs to model space and back.

    Attributes:
        reference: path of the reference input, whose grid and header outputs take.
        reference_shape: its shape; reference_affine: its 4×4 affine (checked when inverting).
        geometry: ordered geometry steps applied to every volume on the reference grid.
        intensity: per-contrast intensity scaling.
        backends: which method ran for each step (registration, brain mask, tissues).
        transforms: per input contrast, the registration record (backend, matrix, files).
    """

    reference: str
    reference_shape: list[int]
    reference_affine: list[list[float]]
    geometry: list[GeometryStep] = field(default_factory=list)
    intensity: dict[str, IntensityScale] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # -- geometry ---------------------------------------------------------------------------
    def to_model_space(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """Apply every geometry step (native reference grid -> model grid)."""
        for step in self.geometry:
            array = step.forward(array, order=order)
        return array

    def to_native(self, array: np.ndarray, order: int = 1) -> np.ndarray:
        """Undo every geometry step in reverse order (model grid -> native reference grid)."""
        for step in reversed(self.geometry):
            array = step.inverse(array, order=order)
        if list(array.shape) != self.reference_shape:
            raise InputError(
                f"inverting the preprocessing gave shape {array.shape}, not the reference's {self.reference_shape}",
                "the record does not belong to this output; report a bug",
            )
        return array

    def model_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the model grid (for writing model-space volumes for QC)."""
        affine = np.asarray(self.reference_affine, dtype=float)
        for step in self.geometry:
            affine = step.forward_affine(affine)
        return affine

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "reference": self.reference,
            "reference_shape": self.reference_shape,
            "reference_affine": self.reference_affine,
            "geometry": [asdict(s) for s in self.geometry],
            "intensity": {k: asdict(v) for k, v in self.intensity.items()},
            "backends": self.backends,
            "transforms": self.transforms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessRecord:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"preprocessing record has schema_version {version}", f"expected {SCHEMA_VERSION}")
        geometry = []
        for step in data["geometry"]:
            step = dict(step)
            kind = _STEP_TYPES.get(step.get("op", ""))
            if kind is None:
                raise InputError(f"unknown preprocessing step {step.get('op')!r}", "the record is corrupt")
            geometry.append(kind(**step))
        return cls(
            reference=data["reference"],
            reference_shape=list(data["reference_shape"]),
            reference_affine=data["reference_affine"],
            geometry=geometry,
            intensity={k: IntensityScale(**v) for k, v in data.get("intensity", {}).items()},
            backends=dict(data.get("backends", {})),
            transforms=dict(data.get("transforms", {})),
        )

    def save(self, path: Path) -> None:
        from mrsynth_cli.io.atomic import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> PreprocessRecord:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read preprocessing record {path} ({type(exc).__name__})", "re-run preprocess") from exc
