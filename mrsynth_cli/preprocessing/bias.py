"""Intensity non-uniformity (bias field) correction with N4 (SimpleITK).

N4 (Tustison et al., "N4ITK: improved N3 bias correction", IEEE TMI 29(6), 2010) models the image
as ``observed = true * bias`` with a smooth multiplicative bias given by a B-spline in the log
domain. It is slow at full resolution and the field is smooth, so, as ANTs and the SimpleITK
example (``Examples/N4BiasFieldCorrection``) do, the B-spline is fitted on a shrunk copy of the
image (integer shrink factors towards 8 mm voxels); the fitted log-field is evaluated on that grid
(``N4BiasFieldCorrectionImageFilter.GetLogBiasFieldAsImage``), interpolated linearly onto the
full-resolution grid and divided out there.

Defaults follow ANTs' ``N4BiasFieldCorrection -b [200]`` (an initial B-spline mesh of about 200 mm,
its resolution doubled at each of 3 fitting levels) with a 0.15 bias FWHM, and at most 20
iterations per level with a 0.001 convergence threshold. The cost is the iterations on the shrunk
grid: on the 1 mm phantom, 8 mm voxels left the SD of pure white matter within 0.001 of 6 mm
voxels (T1 0.034 vs 0.033, T2 0.020 vs 0.019, in units of the median) at about 60 % of the time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from mrsynth_cli.errors import InputError, RuntimeFailure
from mrsynth_cli.io.volume import Volume
from mrsynth_cli.preprocessing.sitk_convert import sitk_to_array_on, volume_to_sitk

__all__ = ["BiasResult", "n4_bias_correct"]


@dataclass
class BiasResult:
    """A bias-corrected volume and the multiplicative field that was removed.

    Attributes:
        corrected: ``volume / field`` on the input grid (float32); voxels outside the fitting mask
            are divided by the field too (it is defined everywhere).
        field: the multiplicative bias field (float32, mean 1 inside the mask).
        details: JSON-ready parameters and diagnostics.
    """

    corrected: Volume
    field: Volume
    details: dict[str, Any] = field(default_factory=dict)


def n4_bias_correct(
    volume: Volume,
    mask: Volume | np.ndarray | None = None,
    *,
    shrink_mm: float = 8.0,
    iterations: tuple[int, ...] = (20, 20, 20),
    convergence: float = 1e-3,
    bias_fwhm: float = 0.15,
    initial_mesh_mm: float = 200.0,
    threads: int = 2,
) -> BiasResult:
    """Remove a smooth multiplicative bias field with N4, fitted on a shrunk copy of the image.

    Args:
        volume: the image (any positive-valued MRI contrast).
        mask: where to fit (a Volume or bool array on the image's grid); default: voxels above the
            image's lowest decile of positive values.
        shrink_mm: target voxel size of the shrunk copy (integer shrink factor per axis).
        iterations: maximum iterations per fitting level; its length is the number of levels.
        convergence: N4 convergence threshold.
        bias_fwhm: N4's bias-field full width at half maximum (log-intensity histogram sharpening).
        initial_mesh_mm: B-spline mesh size at the first level (doubled in resolution per level).
        threads: ITK threads.

    Raises:
        InputError: the mask holds fewer than 1000 positive voxels.
        RuntimeFailure: N4 failed.
    """
    started = time.perf_counter()
    data = volume.data
    if mask is None:
        positive = data[data > 0]
        threshold = float(np.percentile(positive, 10)) if positive.size else 0.0
        fit = data > threshold
    else:
        fit = (mask.data if isinstance(mask, Volume) else np.asarray(mask)) > 0
    fit = fit & (data > 0)  # N4 works on log intensities
    if int(fit.sum()) < 1000:
        raise InputError(
            f"{volume.name}: too few positive voxels inside the brain mask for bias correction ({int(fit.sum())})",
            "check the input and the brain mask",
        )
    # Positive everywhere N4 looks; values outside the mask do not enter the fit.
    floor = float(np.percentile(data[fit], 0.1))
    image = volume_to_sitk(volume, np.where(fit, np.maximum(data, max(floor, 1e-6)), max(floor, 1e-6)))
    mask_image = sitk.Cast(volume_to_sitk(volume, fit.astype(np.float32)), sitk.sitkUInt8)
    factors = [max(1, int(math.floor(shrink_mm / s))) for s in volume.spacing]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(mask_image, factors)

    extent = np.array(small.GetSpacing()) * np.array(small.GetSize())
    order = 3
    control_points = [max(order + 1, int(math.ceil(e / initial_mesh_mm)) + order) for e in extent]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.SetConvergenceThreshold(convergence)
    corrector.SetBiasFieldFullWidthAtHalfMaximum(bias_fwhm)
    corrector.SetSplineOrder(order)
    corrector.SetNumberOfControlPoints(control_points)
    corrector.SetNumberOfThreads(threads)
    try:
        corrector.Execute(small, small_mask)
        # The field is smooth (mesh >= 25 mm): evaluate it on the shrunk grid and interpolate it
        # (linearly) onto the full grid, which is as good and much faster than evaluating the
        # B-spline at every full-resolution voxel.
        log_small = corrector.GetLogBiasFieldAsImage(small)
        log_field = sitk.Resample(log_small, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
    except RuntimeError as exc:
        raise RuntimeFailure(
            f"N4 bias correction failed on {volume.name}: {str(exc).splitlines()[0][:160]}",
            "check the input and the brain mask, or skip bias correction",
        ) from exc
    log_bias = sitk_to_array_on(log_field, volume)
    log_bias -= np.float32(log_bias[fit].mean())  # keep the mean intensity inside the mask
    bias = np.exp(log_bias).astype(np.float32)
    corrected = (data / bias).astype(np.float32)
    details = {
        "backend": "simpleitk-n4",
        "shrink_factors": factors,
        "iterations": list(iterations),
        "iterations_last_level": int(corrector.GetElapsedIterations()),
        "convergence_threshold": convergence,
        "final_convergence": float(corrector.GetCurrentConvergenceMeasurement()),
        "bias_fwhm": bias_fwhm,
        "control_points": control_points,
        "spline_order": order,
        "bias_range_in_mask": [round(float(bias[fit].min()), 4), round(float(bias[fit].max()), 4)],
        "seconds": round(time.perf_counter() - started, 2),
    }
    return BiasResult(volume.with_data(corrected), volume.with_data(bias), details)
