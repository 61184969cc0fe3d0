"""Score a synthetic volume against its acquired reference.

Both volumes must be on one grid. They are normalised with the one scoring normalisation
(:data:`mrsynth_cli.metrics.normalise.SCORING_NORMALISATION`) inside the brain mask (given, or made
from the reference), then scored with PSNR, 3D SSIM, mean axial 2D SSIM, NMSE and MAE over the mask
voxels, and with FSIM and GMSD over the axial slices with at least 1 % mask voxels (cropped to the
mask's bounding box). For TOF-MRA the axial, coronal and sagittal maximum intensity projections of
the normalised volumes (voxels outside the mask set to 0) are also scored with PSNR, 2D SSIM and
RMSE (MMDM's Table 1 columns) over the projected mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mrsynth_cli.errors import ContrastError, InputError
from mrsynth_cli.io.contrasts import Contrast, contrast_from_filename
from mrsynth_cli.io.volume import Volume, check_same_grid, load_volume
from mrsynth_cli.metrics.fsim import fsim_axial
from mrsynth_cli.metrics.gmsd import gmsd_axial
from mrsynth_cli.metrics.image import mae, nmse, psnr, rmse, ssim, ssim2d_axial, ssim3d
from mrsynth_cli.metrics.mip import axial_axis, maximum_intensity_projections
from mrsynth_cli.metrics.normalise import SCORING_NORMALISATION, auto_brain_mask, robust_scale

__all__ = ["evaluate_volumes", "evaluate_files", "is_tof_reference"]


def _brain_mask(ref: Volume, mask: Volume | None) -> tuple[np.ndarray, str]:
    if mask is not None:
        check_same_grid(
            [ref, mask],
            hint=f"give a mask on the reference's grid (resample {mask.name} onto {ref.name} "
            "with nearest-neighbour interpolation)",
        )
        voxels = np.asarray(mask.data) > 0
        if not voxels.any():
            raise InputError(
                f"the mask {mask.name} is empty (no voxel > 0)", "give a brain mask with the brain voxels set to 1"
            )
        return voxels, mask.name
    voxels, description = auto_brain_mask(ref.data)
    if not voxels.any():
        raise InputError(
            f"no brain could be found in {ref.name} for the automatic mask",
            "give a brain mask with --mask",
        )
    return voxels, f"auto ({description})"


def evaluate_volumes(pred: Volume, ref: Volume, mask: Volume | None = None, tof: bool = False) -> dict[str, Any]:
    """Score ``pred`` against ``ref`` (see the module docstring for what is computed).

    Args:
        pred: the synthetic (or baseline) volume.
        ref: the acquired reference, on the same grid.
        mask: a brain mask on the same grid (voxels > 0 are brain); by default one is made from ``ref``.
        tof: also score maximum intensity projections (for TOF-MRA).

    Returns:
        ``{"pred", "ref", "mask", "normalisation", "mask_voxels", "metrics": {"psnr", "ssim3d",
        "ssim2d_axial", "nmse", "mae", "fsim", "gmsd"}}`` plus, when ``tof``, ``"mip": {"axial":
        {"psnr", "ssim", "rmse"}, "coronal": {...}, "sagittal": {...}}``; every number is a plain Python
        float (PSNR is ``inf`` for identical volumes).

    Raises:
        GeometryError: the prediction, or the mask, is not on the reference's grid (both grids shown).
        InputError: the mask is empty, or no automatic mask could be made.
    """
    check_same_grid(
        [pred, ref],
        hint=f"resample the prediction onto the reference's grid (or give the reference that {pred.name} was made for)",
    )
    brain, mask_name = _brain_mask(ref, mask)
    p = robust_scale(pred.data, brain)
    r = robust_scale(ref.data, brain)
    axis = axial_axis(ref.affine)
    metrics = {
        "psnr": psnr(p, r, brain),
        "ssim3d": ssim3d(p, r, brain),
        "ssim2d_axial": ssim2d_axial(p, r, brain, axis=axis),
        "nmse": nmse(p, r, brain),
        "mae": mae(p, r, brain),
        "fsim": fsim_axial(p, r, brain, axis=axis),
        "gmsd": gmsd_axial(p, r, brain, axis=axis),
    }
    result: dict[str, Any] = {
        "pred": pred.name,
        "ref": ref.name,
        "mask": mask_name,
        "normalisation": SCORING_NORMALISATION,
        "mask_voxels": int(np.count_nonzero(brain)),
        "metrics": {name: float(value) for name, value in metrics.items()},
    }
    if tof:
        mip_pred = maximum_intensity_projections(np.where(brain, p, 0.0), ref.affine)
        mip_ref = maximum_intensity_projections(np.where(brain, r, 0.0), ref.affine)
        mip_mask = maximum_intensity_projections(brain, ref.affine)
        result["mip"] = {
            name: {
                "psnr": float(psnr(mip_pred[name], mip_ref[name], mip_mask[name])),
                "ssim": float(ssim(mip_pred[name], mip_ref[name], mip_mask[name])),
                "rmse": float(rmse(mip_pred[name], mip_ref[name], mip_mask[name])),
            }
            for name in mip_ref
        }
    return result


def is_tof_reference(path: str | Path) -> bool:
    """Whether a reference file's name says TOF-MRA (an ambiguous name counts as not TOF)."""
    try:
        return contrast_from_filename(path) is Contrast.TOF
    except ContrastError:
        return False


def evaluate_files(
    pred_path: str | Path,
    ref_path: str | Path,
    mask_path: str | Path | None = None,
    tof: bool | None = None,
) -> dict[str, Any]:
    """Load the files and :func:`evaluate_volumes` them.

    Args:
        pred_path: the synthetic volume (NIfTI).
        ref_path: the acquired reference (NIfTI).
        mask_path: optional brain mask (NIfTI, voxels > 0 are brain) on the reference's grid.
        tof: score MIPs too; ``None`` infers it from the reference's file name (a TOF/angio/MRA name).

    Raises:
        InputError: a file is missing or unusable, or the mask is empty.
        GeometryError: the files are not on one grid.
    """
    ref = load_volume(ref_path)
    pred = load_volume(pred_path)
    mask = load_volume(mask_path, is_mask=True) if mask_path is not None else None
    if tof is None:
        tof = is_tof_reference(ref_path)
    return evaluate_volumes(pred, ref, mask, tof=tof)
