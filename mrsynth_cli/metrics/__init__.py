"""Image-quality metrics for synthetic MRI: PSNR, SSIM (3D and axial 2D), NMSE, MAE, FSIM, GMSD and MIPs.

All metrics take arrays already normalised to [0, 1] (``data_range = 1``) and an optional boolean
mask; :mod:`mrsynth_cli.metrics.normalise` holds the one normalisation used for scoring and
:mod:`mrsynth_cli.metrics.evaluate` ties it all together for a prediction/reference pair.
"""

from __future__ import annotations

from mrsynth_cli.metrics.evaluate import evaluate_files, evaluate_volumes

# The 2D ``fsim``/``gmsd`` functions are not re-exported here: the names would shadow the
# submodules ``mrsynth_cli.metrics.fsim`` and ``mrsynth_cli.metrics.gmsd``.
from mrsynth_cli.metrics.fsim import fsim_axial
from mrsynth_cli.metrics.gmsd import gmsd_axial
from mrsynth_cli.metrics.image import mae, nmse, psnr, ssim, ssim2d_axial, ssim3d
from mrsynth_cli.metrics.mip import axial_axis, maximum_intensity_projections
from mrsynth_cli.metrics.normalise import SCORING_NORMALISATION, auto_brain_mask, default_brain_mask, robust_scale

__all__ = [
    "SCORING_NORMALISATION",
    "auto_brain_mask",
    "axial_axis",
    "default_brain_mask",
    "evaluate_files",
    "evaluate_volumes",
    "fsim_axial",
    "gmsd_axial",
    "mae",
    "maximum_intensity_projections",
    "nmse",
    "psnr",
    "robust_scale",
    "ssim",
    "ssim2d_axial",
    "ssim3d",
]
