"""Gradient Magnitude Similarity Deviation (GMSD), written from the paper's equations.

W. Xue, L. Zhang, X. Mou and A. C. Bovik, "Gradient Magnitude Similarity Deviation: A Highly
Efficient Perceptual Image Quality Index", IEEE Trans. Image Processing 23(2):684-695, 2014.

For images ``r`` (reference) and ``d`` (distorted) in [0, 1]:

1. Both are averaged over 2×2 blocks and downsampled by 2 (the paper's preprocessing: a 2×2 average
   filter, then every second pixel in each direction; a trailing odd row/column is averaged with the
   zero padding of the filter).
2. Gradient magnitude with the 3×3 Prewitt filters divided by 3 (Eq. 2):
   ``h_x = [[1, 0, -1]] * 3 / 3``, ``h_y = h_x.T``, ``m = sqrt((r*h_x)² + (r*h_y)²)``, convolution
   with zero padding, output the size of the input.
3. Gradient magnitude similarity (Eq. 4): ``GMS = (2 m_r m_d + c) / (m_r² + m_d² + c)``. The paper
   uses ``c = 170`` for 8-bit images in [0, 255]; gradients scale linearly with intensity, so for
   images in [0, 1] the same constant is ``c = 170 / 255²`` (this module's :data:`C`).
4. GMSD (Eq. 8) is the standard deviation of the GMS map, ``sqrt(mean((GMS - mean(GMS))²))``
   (population standard deviation, as in the paper's equation). 0 means identical gradients; larger
   is worse.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from mrsynth_cli.metrics.image import MIN_SLICE_MASK_FRACTION, axial_crops

__all__ = ["C", "C_8BIT", "PREWITT_X", "gmsd", "gmsd_axial", "gms_map", "downsample_2x2", "gradient_magnitude"]

#: The paper's stability constant for images in [0, 255].
C_8BIT = 170.0
#: The same constant for images in [0, 1].
C = C_8BIT / 255.0**2
#: Prewitt horizontal-derivative filter divided by 3 (the vertical one is its transpose).
PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0


def downsample_2x2(image: np.ndarray) -> np.ndarray:
    """Mean of each 2×2 block starting at even indices; an odd trailing row/column is zero-padded."""
    image = np.asarray(image, dtype=np.float64)
    rows, cols = image.shape
    padded = np.zeros((rows + rows % 2, cols + cols % 2))
    padded[:rows, :cols] = image
    return 0.25 * (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2])


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Prewitt/3 gradient magnitude, zero padding, output of the input's size."""
    gx = signal.convolve2d(image, PREWITT_X, mode="same", boundary="fill")
    gy = signal.convolve2d(image, PREWITT_X.T, mode="same", boundary="fill")
    return np.sqrt(gx * gx + gy * gy)


def gms_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The gradient magnitude similarity map (Eq. 4) of two 2D images in [0, 1], after downsampling."""
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise ValueError(f"gmsd needs two 2D images of one shape, got {pred.shape} and {ref.shape}")
    m_r = gradient_magnitude(downsample_2x2(ref))
    m_d = gradient_magnitude(downsample_2x2(pred))
    return (2.0 * m_r * m_d + C) / (m_r * m_r + m_d * m_d + C)


def gmsd(pred: np.ndarray, ref: np.ndarray) -> float:
    """GMSD of two 2D images in [0, 1] (0 = identical gradients; symmetric in its arguments)."""
    return float(np.std(gms_map(pred, ref)))


def gmsd_axial(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    axis: int = 2,
    min_fraction: float = MIN_SLICE_MASK_FRACTION,
) -> float:
    """Mean GMSD over the axial slices with >= 1 % mask voxels, each cropped to the mask's bounding box.

    See :func:`mrsynth_cli.metrics.image.axial_crops` for the slices and the crop.
    """
    preds, refs = axial_crops(pred, ref, mask, axis, min_fraction)
    return float(np.mean([gmsd(p, r) for p, r in zip(preds, refs, strict=True)]))
