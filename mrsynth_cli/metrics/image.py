"""Voxel-wise and structural metrics on volumes already normalised to [0, 1] (``data_range = 1``).

Every function takes the prediction, the reference and an optional boolean mask of the same shape;
without a mask every voxel counts. PSNR, NMSE and MAE are computed over the mask voxels. SSIM is the
Gaussian-window SSIM of Wang, Bovik, Sheikh & Simoncelli (IEEE TIP 2004): sigma 1.5 (window
truncated at 3.5 sigma, an 11-tap filter, as scikit-image), K1 = 0.01, K2 = 0.03, population
(co)variances; the SSIM map is computed on the whole array (reflecting at the borders) and then
averaged over the mask voxels (scikit-image instead crops a 5-voxel border before averaging).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "DATA_RANGE",
    "SSIM_SIGMA",
    "SSIM_TRUNCATE",
    "SSIM_K1",
    "SSIM_K2",
    "psnr",
    "nmse",
    "rmse",
    "mae",
    "ssim_map",
    "ssim",
    "ssim3d",
    "ssim2d_axial",
    "slices_with_mask",
    "axial_crops",
    "MIN_SLICE_MASK_FRACTION",
]

DATA_RANGE = 1.0
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: FSIM and GMSD use the axial slices with at least this fraction of their voxels in the mask.
MIN_SLICE_MASK_FRACTION = 0.01


def _prepare(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if mask is None:
        mask = np.ones(ref.shape, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ref.shape:
            raise ValueError(f"mask shape {mask.shape} differs from reference shape {ref.shape}")
    if not mask.any():
        raise ValueError("the mask has no voxel")
    return pred, ref, mask


def psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over the mask voxels: 10·log10(1 / MSE); ``inf`` if identical."""
    pred, ref, mask = _prepare(pred, ref, mask)
    mse = float(np.mean((pred[mask] - ref[mask]) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def rmse(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root mean squared error over the mask voxels (MMDM's Table 1 reports it in % of the range)."""
    pred, ref, mask = _prepare(pred, ref, mask)
    return math.sqrt(float(np.mean((pred[mask] - ref[mask]) ** 2)))


def nmse(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised mean squared error over the mask voxels: sum((pred - ref)²) / sum(ref²).

    ``nan`` when the reference is zero on every mask voxel (the ratio is undefined).
    """
    pred, ref, mask = _prepare(pred, ref, mask)
    r = ref[mask]
    energy = float(np.sum(r**2))
    if energy == 0.0:
        return math.nan
    return float(np.sum((pred[mask] - r) ** 2)) / energy


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over the mask voxels."""
    pred, ref, mask = _prepare(pred, ref, mask)
    return float(np.mean(np.abs(pred[mask] - ref[mask])))


def ssim_map(pred: np.ndarray, ref: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """The Gaussian-window SSIM map (Wang et al. 2004) of two arrays in [0, 1].

    Args:
        pred, ref: arrays of one shape.
        axes: the axes the window extends over (default: all); e.g. ``(0, 1)`` for a stack of 2D
            SSIM maps of the slices along axis 2.

    Returns:
        float64 map of the input's shape; equal to scikit-image's ``structural_similarity(...,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, full=True)``.
    """
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(ref, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"prediction shape {x.shape} differs from reference shape {y.shape}")
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    sigma = [SSIM_SIGMA if a in axes else 0.0 for a in range(x.ndim)]

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    mu_x = smooth(x)
    mu_y = smooth(y)
    var_x = smooth(x * x) - mu_x * mu_x
    var_y = smooth(y * y) - mu_y * mu_y
    cov = smooth(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def _window_radius() -> int:
    return int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # as scipy.ndimage.gaussian_filter


def _mask_box(mask: np.ndarray, margins: tuple[int, ...]) -> tuple[slice, ...]:
    """The mask's bounding box grown by ``margins`` voxels per axis, clipped to the array."""
    box = []
    for axis, margin in enumerate(margins):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(0, int(present[0]) - margin), min(mask.shape[axis], int(present[-1]) + 1 + margin)))
    return tuple(box)


def _masked_ssim_map(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, axes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The SSIM map and mask restricted to the mask's bounding box plus the window radius.

    The map's values on the mask voxels are exactly those of the map of the whole arrays: every
    window centred on a mask voxel lies inside the box, or is reflected at the same array border.
    """
    radius = _window_radius()
    box = _mask_box(mask, tuple(radius if a in axes else 0 for a in range(mask.ndim)))
    return ssim_map(pred[box], ref[box], axes=axes), mask[box]


def ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM of two arrays (any dimension, window over all axes) averaged over the mask voxels."""
    pred, ref, mask = _prepare(pred, ref, mask)
    smap, mask = _masked_ssim_map(pred, ref, mask, tuple(range(ref.ndim)))
    return float(np.mean(smap[mask]))


def ssim3d(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """3D SSIM of two volumes, the 3D window's map averaged over the mask voxels."""
    if np.ndim(ref) != 3:
        raise ValueError(f"ssim3d needs 3D volumes, got shape {np.shape(ref)}")
    return ssim(pred, ref, mask)


def slices_with_mask(mask: np.ndarray, axis: int, min_fraction: float = 0.0) -> np.ndarray:
    """Indices along ``axis`` of the slices whose fraction of mask voxels is > 0 and >= ``min_fraction``."""
    mask = np.asarray(mask, dtype=bool)
    other = tuple(a for a in range(mask.ndim) if a != axis % mask.ndim)
    counts = np.count_nonzero(mask, axis=other)
    per_slice = mask.size // mask.shape[axis]
    keep = (counts > 0) & (counts >= min_fraction * per_slice)
    return np.flatnonzero(keep)


def ssim2d_axial(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, axis: int = 2) -> float:
    """Mean over axial slices of the 2D SSIM of each slice.

    Each slice along ``axis`` (the voxel axis closest to superior, see
    :func:`mrsynth_cli.metrics.mip.axial_axis`) that contains mask voxels gets the mean of its 2D SSIM
    map over its mask voxels; the result is the unweighted mean of those slice scores.
    """
    pred, ref, mask = _prepare(pred, ref, mask)
    if ref.ndim != 3:
        raise ValueError(f"ssim2d_axial needs 3D volumes, got shape {ref.shape}")
    axis %= 3
    in_plane = tuple(a for a in range(3) if a != axis)
    smap, mask = _masked_ssim_map(pred, ref, mask, in_plane)
    scores = []
    for index in slices_with_mask(mask, axis):
        slice_mask = np.take(mask, index, axis=axis)
        scores.append(float(np.mean(np.take(smap, index, axis=axis)[slice_mask])))
    return float(np.mean(scores))


def axial_crops(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    axis: int = 2,
    min_fraction: float = MIN_SLICE_MASK_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """The axial slices scored by the 2D perceptual metrics (FSIM, GMSD), cropped to the mask.

    Slices along ``axis`` with at least ``min_fraction`` (1 %) of their voxels in the mask are kept
    (all slices with any mask voxel if none reaches it), and every kept slice is cropped to the
    in-plane bounding box of the whole 3D mask, so that all crops share one shape.

    Returns:
        two stacks (slices, rows, cols): the prediction's and the reference's crops.
    """
    pred, ref, mask = _prepare(pred, ref, mask)
    if ref.ndim != 3:
        raise ValueError(f"axial slices need 3D volumes, got shape {ref.shape}")
    axis %= 3
    indices = slices_with_mask(mask, axis, min_fraction)
    if indices.size == 0:
        indices = slices_with_mask(mask, axis)
    box = _mask_box(mask, (0, 0, 0))
    box = tuple(slice(None) if a == axis else box[a] for a in range(3))

    def stack(volume: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(volume[box], axis, 0)[indices])

    return stack(pred), stack(ref)
