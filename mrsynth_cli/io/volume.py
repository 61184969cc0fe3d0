"""NIfTI volumes that never lose their geometry.

:func:`load_volume` validates everything a model would otherwise trip over later (format,
dimensionality, finite and non-empty values, voxel sizes, orientation headers) and reports it as
one line naming the file. :func:`save_volume` writes data onto a reference volume's grid with the
reference's affine, header and qform/sform codes, an explicit dtype and a ``descrip`` that labels
synthetic output, atomically and never over an existing file unless asked.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mrsynth_cli.errors import GeometryError, InputError
from mrsynth_cli.io.atomic import atomic_path, check_writable
from mrsynth_cli.io.contrasts import Contrast

__all__ = [
    "Volume",
    "load_volume",
    "save_volume",
    "check_same_grid",
    "grid_summary",
    "SYNTHETIC_DESCRIP_PREFIX",
]

log = logging.getLogger(__name__)

#: Every synthetic volume's NIfTI ``descrip`` starts with this, so viewers show it.
SYNTHETIC_DESCRIP_PREFIX = "SYNTHETIC mrsynth"
#: Plausible voxel edge lengths in mm; outside this the header is almost surely wrong.
VOXEL_SIZE_RANGE_MM = (0.01, 30.0)
#: More voxels than this is not a brain MRI volume (1024^3 float32 is already 4 GiB).
MAX_VOXELS = 1024**3
#: Tolerance on direction cosines (sform is stored in float32).
ORTHONORMAL_TOL = 1e-3
#: qform and sform closer than this (mm, per matrix entry) are treated as equal.
AFFINE_TOL_MM = 1e-3


@dataclass
class Volume:
    """A 3D image with its geometry.

    Attributes:
        data: voxel values as float32, shape (X, Y, Z), scaled by the header's slope/intercept.
        affine: 4×4 voxel-to-world (RAS+ mm) matrix, the one nibabel chose (sform if coded, else qform).
        header: the NIfTI header (a copy), whose qform/sform codes the writer reuses.
        path: the source file, or ``None`` for an in-memory volume.
        contrast: the contrast if known.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None
    contrast: Contrast | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm, from the affine's columns."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<in-memory volume>"

    def with_data(self, data: np.ndarray, contrast: Contrast | None = None) -> Volume:
        """A new volume on this grid holding ``data``."""
        if tuple(data.shape) != self.shape:
            raise GeometryError(f"data of shape {tuple(data.shape)} does not fit the grid {self.shape} of {self.name}")
        return Volume(data, self.affine.copy(), self.header.copy(), self.path, contrast or self.contrast)


class _NibabelFixes(logging.Handler):
    """Collects what nibabel silently "fixes" in a header while loading (e.g. zero voxel sizes)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_image(path: Path) -> nib.Nifti1Image:
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InputError(f"{path} is not a NIfTI file", "give a .nii or .nii.gz file (convert DICOM with dcm2niix)")
    fixes = _NibabelFixes()
    nib_log = logging.getLogger("nibabel.global")
    nib_log.addHandler(fixes)
    propagate, nib_log.propagate = nib_log.propagate, False  # said once, by us, below
    try:
        image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(
            f"{path} is not a readable NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            "check that the file is complete and really NIfTI (re-export or re-download it)",
        ) from exc
    finally:
        nib_log.removeHandler(fixes)
        nib_log.propagate = propagate
    for message in fixes.messages:
        if "pixdim[1,2,3] should be non-zero" not in message:
            log.warning("%s: %s", path.name, message)
    if any("pixdim[1,2,3] should be non-zero" in m for m in fixes.messages):
        raise InputError(f"{path} has a zero voxel size in its header", "fix the header (pixdim) or re-export the image")
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path} is not a NIfTI image ({type(image).__name__})", "convert it to NIfTI")
    return image


def _validated_shape(path: Path, image: nib.Nifti1Image) -> tuple[int, ...]:
    shape = tuple(int(s) for s in image.header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 4:
        raise InputError(
            f"{path} is 4D with {shape[3]} frames",
            "give one 3D volume (extract a frame, e.g. fslroi in.nii.gz out.nii.gz 0 1)",
        )
    if len(shape) != 3:
        raise InputError(f"{path} has {len(shape)} dimensions {shape}, not 3", "give a 3D volume")
    if min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"{path} has an implausible size {shape}", "check the header (the file may be corrupt)")
    return shape


def _validated_affine(path: Path, image: nib.Nifti1Image, warnings: list[str]) -> np.ndarray:
    header = image.header
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = header.get_qform(coded=True)
    if s_code == 0 and q_code == 0:
        warnings.append(f"{path} has no qform or sform orientation; assuming voxel sizes only (scanner axes unknown)")
    elif s_code and q_code and not np.allclose(sform, qform, atol=AFFINE_TOL_MM):
        warnings.append(f"{path}: qform and sform disagree; using the sform (code {int(s_code)}) as nibabel does")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise GeometryError(f"{path} has a non-finite affine", "repair the header (e.g. fslorient or re-export)")
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    low, high = VOXEL_SIZE_RANGE_MM
    if np.any(spacing < low) or np.any(spacing > high):
        sizes = " × ".join(f"{s:g}" for s in spacing)
        raise GeometryError(
            f"{path} has implausible voxel sizes {sizes} mm", "repair the header's pixdim/affine (sizes are in mm)"
        )
    direction = linear / spacing
    if abs(np.linalg.det(direction)) < 1e-6:
        raise GeometryError(f"{path} has a degenerate (singular) direction matrix", "repair the header's affine")
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOL):
        raise GeometryError(
            f"{path} has a sheared (non-orthonormal) affine",
            "resample it onto an orthogonal grid first (e.g. nibabel.processing.resample_to_output)",
        )
    return affine


def load_volume(path: str | Path, contrast: Contrast | None = None, *, is_mask: bool = False) -> Volume:
    """Load and validate one 3D NIfTI volume.

    A singleton 4th dimension is squeezed; everything else that is not a usable 3D brain volume is
    refused with a one-line :class:`InputError` that names the file and the fix.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        contrast: the contrast, if known.
        is_mask: a mask may be constant (all ones) but not all zero.

    Raises:
        InputError: missing, unreadable, not NIfTI, not 3D, non-finite, empty, implausible voxel sizes.
        GeometryError: degenerate or sheared affine.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {path} does not exist", "check the path (and the working folder)")
    if path.is_dir():
        raise InputError(f"input {path} is a folder, not a file", "give the NIfTI file inside it")
    warnings: list[str] = []
    image = _read_image(path)
    shape = _validated_shape(path, image)
    dtype = image.header.get_data_dtype()
    if dtype.kind == "c" or dtype.names is not None:
        kind = "complex" if dtype.kind == "c" else "RGB/structured"
        raise InputError(f"{path} holds {kind} voxels, not intensities", "export magnitude images (one value per voxel)")
    affine = _validated_affine(path, image, warnings)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(
            f"{path} could not be read to the end ({type(exc).__name__})",
            "the file is truncated or corrupt; re-export or re-download it",
        ) from exc
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        raise InputError(
            f"{path} has {bad} NaN or infinite voxels", "replace them (e.g. fslmaths in -nan out) and try again"
        )
    if is_mask and float(data.max()) > 0:
        pass
    elif float(data.max()) == float(data.min()):
        raise InputError(f"{path} is empty (every voxel is {float(data.min()):g})", "check that the right file was given")
    for message in warnings:
        log.warning(message)
    header = image.header.copy()
    return Volume(np.ascontiguousarray(data), affine, header, path, contrast, warnings)


def synthetic_descrip(contrast: Contrast | str | None, model: str | None = None) -> str:
    """The ``descrip`` text of a synthetic volume (NIfTI limits it to 80 bytes)."""
    text = f"{SYNTHETIC_DESCRIP_PREFIX} {contrast or ''}".strip()
    if model:
        text += f" model={model}"
    return (text + " - not acquired")[:79]


def save_volume(
    data: np.ndarray,
    reference: Volume,
    path: str | Path,
    *,
    dtype: np.dtype | type = np.float32,
    descrip: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``data`` onto ``reference``'s grid: its affine, header and qform/sform codes.

    The file appears atomically (temporary file, then rename), and an existing file is kept unless
    ``force``.

    Args:
        data: array of exactly ``reference.shape``.
        reference: the volume whose grid and header the output takes.
        path: destination ``.nii``/``.nii.gz``.
        dtype: on-disk data type, set explicitly (integer types are rounded and clipped to range).
        descrip: NIfTI ``descrip``; use :func:`synthetic_descrip` for synthetic output.
        force: overwrite an existing file.

    Raises:
        GeometryError: ``data`` does not have the reference's shape.
        OutputExistsError: the file exists and ``force`` is false.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InputError(f"output {path} must end in .nii or .nii.gz", "choose a NIfTI file name")
    check_writable(path, force=force)
    array = np.asarray(data)
    if tuple(array.shape) != reference.shape:
        raise GeometryError(
            f"cannot write {path}: data of shape {tuple(array.shape)} is not on the grid {reference.shape} "
            f"of {reference.name}",
            "this is a bug in the step that produced the data; please report it",
        )
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    array = array.astype(dtype)

    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_data_shape(array.shape)
    image = nib.Nifti1Image(array, None, header=header)
    sform, s_code = reference.header.get_sform(coded=True)
    qform, q_code = reference.header.get_qform(coded=True)
    # Keep the reference's own qform/sform and codes, not nibabel's defaults.
    image.set_sform(sform if sform is not None else reference.affine, int(s_code))
    image.set_qform(qform if qform is not None else reference.affine, int(q_code))
    out_header = image.header
    out_header.set_slope_inter(1.0, 0.0)
    out_header["cal_min"] = 0
    out_header["cal_max"] = 0
    if descrip is not None:
        out_header["descrip"] = descrip.encode("ascii", "replace")[:79]
    with atomic_path(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        nib.save(image, str(tmp))
    return path


def grid_summary(volume: Volume) -> str:
    """One-line description of a volume's grid for error messages."""
    spacing = "×".join(f"{s:.3g}" for s in volume.spacing)
    origin = ", ".join(f"{v:.1f}" for v in volume.affine[:3, 3])
    axcodes = "".join(nib.orientations.aff2axcodes(volume.affine))
    return f"{volume.name}: shape {volume.shape}, spacing {spacing} mm, {axcodes}, origin ({origin})"


def check_same_grid(volumes: list[Volume], hint: str = "resample them onto one grid first") -> None:
    """Raise :class:`GeometryError` listing every grid unless all volumes share one grid."""
    if len(volumes) < 2:
        return
    first = volumes[0]
    same = all(
        v.shape == first.shape and np.allclose(v.affine, first.affine, atol=AFFINE_TOL_MM) for v in volumes[1:]
    )
    if not same:
        grids = "; ".join(grid_summary(v) for v in volumes)
        raise GeometryError(f"the volumes are on different grids: {grids}", hint)
