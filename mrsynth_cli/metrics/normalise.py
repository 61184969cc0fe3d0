"""The one intensity normalisation used to score every model and every baseline.

MRI intensities have no absolute scale, so a synthetic volume and its reference are each mapped to
[0, 1] by their own robust range inside the brain mask before any metric is computed; every metric
then uses ``data_range = 1``. :data:`SCORING_NORMALISATION` is the text quoted by the README and by
the JSON written by ``mrsynth evaluate``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "SCORING_NORMALISATION",
    "LOW_PERCENTILE",
    "HIGH_PERCENTILE",
    "ZERO_BACKGROUND_FRACTION",
    "OTSU_BINS",
    "robust_scale",
    "otsu_threshold",
    "auto_brain_mask",
    "default_brain_mask",
]

#: Lower and upper percentiles (in %) of the in-mask intensities that map to 0 and 1.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
#: A reference with at least this fraction of voxels exactly at its minimum has a zero background.
ZERO_BACKGROUND_FRACTION = 0.05
#: Histogram bins of the Otsu threshold.
OTSU_BINS = 256

SCORING_NORMALISATION = (
    "Each volume (prediction and reference alike) is scaled independently by its own 0.5th and 99.5th "
    "percentiles (numpy.percentile, linear interpolation) of the voxels inside the brain mask: "
    "x' = clip((x - p0.5) / (p99.5 - p0.5), 0, 1); a volume with p99.5 == p0.5 becomes (x > p0.5). "
    "All metrics then use data_range = 1. Brain mask: the given mask (voxels > 0); by default, if >= 5% "
    "of the reference's voxels equal its minimum (zero background, i.e. skull-stripped), the voxels above "
    "that minimum; else, if >= 5% are exactly 0 (skull-stripped with negative interpolation ringing), the "
    "non-zero voxels with holes filled and the largest component kept; otherwise the reference's Otsu threshold (256-bin histogram), with holes filled "
    "(scipy.ndimage.binary_fill_holes) and only the largest 6-connected component kept."
)
"""The scoring normalisation in one paragraph, quoted by the README and the evaluation JSON."""


def robust_scale(
    data: np.ndarray, mask: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> np.ndarray:
    """Scale ``data`` to [0, 1] by its ``low``/``high`` percentiles inside ``mask``, clipped.

    Args:
        data: a volume (any shape).
        mask: boolean array of ``data``'s shape with at least one true voxel.
        low: lower percentile (%) that maps to 0.
        high: upper percentile (%) that maps to 1.

    Returns:
        float64 array of ``data``'s shape in [0, 1]. When the two percentiles coincide (a volume that
        is constant over most of the mask) the result is ``data > p_low`` as 0/1, so that a constant
        prediction still gets a (poor) score instead of a division by zero.

    Raises:
        ValueError: ``mask`` has another shape or no true voxel (a bug in the caller: the evaluation
            checks masks first and reports them as input errors).
    """
    data = np.asarray(data)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape:
        raise ValueError(f"mask shape {mask.shape} differs from data shape {data.shape}")
    values = data[mask].astype(np.float64)
    if values.size == 0:
        raise ValueError("the mask has no voxel")
    p_low, p_high = np.percentile(values, [low, high])
    out = data.astype(np.float64)
    if p_high <= p_low:
        return (out > p_low).astype(np.float64)
    out -= p_low
    out /= p_high - p_low
    np.clip(out, 0.0, 1.0, out=out)
    return out


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold (Otsu 1979) of ``values`` from a ``bins``-bin histogram over their range.

    The threshold is the centre of the last bin of the lower class that maximises the between-class
    variance w0·w1·(mu0 - mu1)²; foreground is ``values > threshold``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    w0 = np.cumsum(counts)  # voxels at or below each bin
    w1 = w0[-1] - w0  # voxels above it
    s0 = np.cumsum(counts * centres)
    s1 = s0[-1] - s0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (s0 / w0 - s1 / w1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)  # the last split leaves the upper class empty
    return float(centres[int(np.argmax(between))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def auto_brain_mask(reference: np.ndarray) -> tuple[np.ndarray, str]:
    """The default brain mask of a reference volume and a short description of how it was made.

    If at least :data:`ZERO_BACKGROUND_FRACTION` of the voxels equal the minimum (a skull-stripped
    volume with a zero background) the mask is ``reference > min``; else if as many are exactly 0
    (skull-stripped, with negative interpolation ringing inside) it is ``reference != 0`` with holes
    filled and the largest component kept; otherwise it is the Otsu
    foreground with holes filled and only the largest (6-connected) component kept.

    Returns:
        (boolean mask of ``reference``'s shape, description). The mask may be empty; callers check.
    """
    reference = np.asarray(reference)
    minimum = reference.min()
    background = float(np.count_nonzero(reference == minimum)) / reference.size
    if background >= ZERO_BACKGROUND_FRACTION:
        return reference > minimum, f"reference > its minimum {float(minimum):g} (zero background)"
    # Skull-stripped volumes resampled with ringing have a zero background but negative brain voxels.
    zeros = float(np.count_nonzero(reference == 0)) / reference.size
    if zeros >= ZERO_BACKGROUND_FRACTION:
        mask = _largest_component(ndimage.binary_fill_holes(reference != 0))
        return mask, "reference != 0 (zero background, negative values inside), holes filled, largest component"
    threshold = otsu_threshold(reference)
    mask = ndimage.binary_fill_holes(reference > threshold)
    mask = _largest_component(mask)
    return mask, f"Otsu threshold {threshold:g} of the reference, holes filled, largest component"


def default_brain_mask(reference: np.ndarray) -> np.ndarray:
    """The default brain mask of ``reference`` (see :func:`auto_brain_mask`), as a boolean array."""
    return auto_brain_mask(reference)[0]
