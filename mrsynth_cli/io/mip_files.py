"""Axial, coronal and sagittal maximum intensity projections of a volume, written as NIfTI and PNG.

For TOF-MRA the MIP is how vessels are read. The projections are those of
:func:`mrsynth_cli.metrics.mip.maximum_intensity_projections` (closest canonical RAS order first).

* NIfTI: the projection as a one-voxel-thick slab on the canonical grid, its affine that of the
  volume's canonical grid moved to the middle of the projected axis (so viewers place it through
  the centre of the head), float32.
* PNG: 8-bit greyscale, 0 -> black and the projection's 99.9th percentile -> white, shown in the
  neurological convention: the subject's right on the image's right, anterior (axial) or superior
  (coronal, sagittal) up; the sagittal view has anterior on the right. Pixels are voxels (no
  resampling).
"""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np

from mrsynth_cli.io.atomic import atomic_path, check_writable, write_bytes_atomic
from mrsynth_cli.io.contrasts import nifti_stem
from mrsynth_cli.metrics.mip import PROJECTIONS, maximum_intensity_projections

__all__ = ["mip_paths", "write_mip_files"]


def mip_paths(volume_path: Path, out_dir: Path) -> dict[str, tuple[Path, Path]]:
    """``{view: (nifti, png)}``: ``<out_dir>/<stem>_mip-<view>.nii.gz`` and ``.png``."""
    stem = nifti_stem(volume_path)
    return {view: (out_dir / f"{stem}_mip-{view}.nii.gz", out_dir / f"{stem}_mip-{view}.png") for view in PROJECTIONS}


def _canonical_affine(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    return affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def _png_bytes(plane: np.ndarray) -> bytes:
    from PIL import Image

    top = float(np.percentile(plane, 99.9)) if plane.size else 0.0
    scaled = np.clip(plane / top, 0.0, 1.0) if top > 0 else np.zeros_like(plane)
    image = np.ascontiguousarray((scaled.T[::-1] * 255).round().astype(np.uint8))  # rows: 2nd axis, upwards
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_mip_files(
    data: np.ndarray, affine: np.ndarray, volume_path: Path, out_dir: Path, *, force: bool = False
) -> dict[str, tuple[Path, Path]]:
    """Write the three MIPs of ``data`` (on ``affine``) as NIfTI and PNG; returns the paths by view.

    Raises:
        OutputExistsError: a file exists and ``force`` is false (checked for all six before writing any).
    """
    paths = mip_paths(volume_path, Path(out_dir))
    for nifti, png in paths.values():
        check_writable(nifti, force=force)
        check_writable(png, force=force)
    data = np.asarray(data, dtype=np.float32)
    mips = maximum_intensity_projections(data, affine)
    canonical = _canonical_affine(np.asarray(affine, dtype=np.float64), data.shape)
    shape = nib.orientations.apply_orientation(
        np.empty(data.shape, bool), nib.orientations.io_orientation(affine)
    ).shape
    for view, axis in PROJECTIONS.items():
        nifti, png = paths[view]
        plane_affine = canonical.copy()
        plane_affine[:3, 3] += canonical[:3, axis] * (shape[axis] - 1) / 2.0
        slab = np.expand_dims(mips[view], axis)
        with atomic_path(nifti, suffix=".nii.gz") as tmp:
            image = nib.Nifti1Image(slab.astype(np.float32), plane_affine)
            image.header["descrip"] = f"MIP {view}"[:79].encode()
            nib.save(image, str(tmp))
        write_bytes_atomic(png, _png_bytes(mips[view]))
    return paths
