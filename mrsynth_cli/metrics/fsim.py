"""Feature Similarity index (FSIM, grayscale), written from the paper's equations.

L. Zhang, L. Zhang, X. Mou and D. Zhang, "FSIM: A Feature Similarity Index for Image Quality
Assessment", IEEE Trans. Image Processing 20(8):2378-2386, 2011.

For two grayscale images in [0, 1]:

1. **Downsampling** (the paper's reference procedure, Section IV): with
   ``F = max(1, round(min(rows, cols) / 256))``, both images are filtered with an F×F average filter
   and every F-th pixel is kept (F = 1, i.e. nothing, for images under 384 pixels on a side, which
   covers brain slices at about 1 mm).
2. **Phase congruency** PC (Eq. 1-4) by Kovesi's method ("Image features from phase congruency",
   Videre 1999): a bank of log-Gabor filters with n = 4 scales of minimum wavelength 6 pixels and
   scale factor 2 (centre frequencies 1/6, 1/12, 1/24, 1/48 cycles/pixel), sigma_r = -ln(0.55) =
   0.5978, J = 4 orientations 0, 45, 90, 135 degrees with Gaussian angular spread sigma_theta =
   pi / (4·1.2) = 0.6545 (Eq. 1), applied in the frequency domain (FFT, periodic boundaries) with a
   Butterworth low-pass (cut-off 0.45, order 15) against aliasing. Per orientation j the local energy
   uses the mean phase vector of the responses,
   ``E_j = sum_n (e_n·cos + o_n·sin - |e_n·sin - o_n·cos|)`` (Kovesi's phase-deviation form),
   minus a noise threshold ``T_j`` estimated from the median squared amplitude of the finest scale
   assuming Rayleigh-distributed noise (k = 2 standard deviations, divided by 1.7 as in Kovesi's
   phasecong2); ``PC = sum_j max(E_j - T_j, 0) / sum_j sum_n A_nj`` (Eq. 4).
3. **Gradient magnitude** G with the Scharr operator, ``G_x = [[3,0,-3],[10,0,-10],[3,0,-3]]/16``,
   ``G_y = G_x.T`` (Eq. 5), convolution with zero padding.
4. **Similarities** (Eq. 6-8): ``S_PC = (2 PC1 PC2 + T1) / (PC1² + PC2² + T1)``,
   ``S_G = (2 G1 G2 + T2) / (G1² + G2² + T2)``, ``S_L = S_PC · S_G``, and
   ``FSIM = sum(S_L · PC_m) / sum(PC_m)`` with ``PC_m = max(PC1, PC2)`` (Eq. 9).

Constants and the [0, 1] range: the paper gives T1 = 0.85 and T2 = 160 for 8-bit images in
[0, 255]. PC is dimensionless (a ratio of amplitudes) so T1 is unchanged; gradients scale linearly
with intensity, so on [0, 1] images ``T2 = 160 / 255²`` (:data:`T2`). Kovesi's small constant that
keeps the mean phase vector finite (1e-4 for [0, 255]) is likewise ``1e-4 / 255`` (:data:`EPSILON`).
The score on [0, 1] images thus equals the paper's score on the same images scaled to [0, 255].
If both images have no phase congruency anywhere (sum(PC_m) = 0, e.g. two constant images), FSIM is
the plain mean of S_L (1 for identical images).

Speed: the filter bank depends only on the image shape and is built once per shape (cached); many
slices of one shape are filtered together with batched FFTs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy import signal

from mrsynth_cli.metrics.image import MIN_SLICE_MASK_FRACTION, axial_crops

__all__ = [
    "T1",
    "T2",
    "T2_8BIT",
    "EPSILON",
    "N_SCALES",
    "N_ORIENTATIONS",
    "SCHARR_X",
    "fsim",
    "fsim_batch",
    "fsim_axial",
    "phase_congruency",
    "gradient_magnitude",
    "downsample_factor",
    "downsample",
]

T1 = 0.85
T2_8BIT = 160.0
T2 = T2_8BIT / 255.0**2
EPSILON = 1e-4 / 255.0

N_SCALES = 4
N_ORIENTATIONS = 4
MIN_WAVELENGTH = 6.0
SCALE_FACTOR = 2.0
SIGMA_ON_F = 0.55
D_THETA_ON_SIGMA = 1.2
NOISE_K = 2.0
NOISE_RESCALE = 1.7
LOWPASS_CUTOFF = 0.45
LOWPASS_ORDER = 15

SCHARR_X = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0

#: Slices filtered together (bounds the memory of the complex responses).
_BATCH = 8


@dataclass(frozen=True)
class _FilterBank:
    shape: tuple[int, int]
    #: (orientations, scales, rows, cols) real transfer functions, FFT order (zero frequency first).
    filters: np.ndarray
    #: per orientation: noise threshold T_j = sqrt(median |finest response|²) · factor_j.
    noise_factor: np.ndarray


def _frequency_axis(n: int) -> np.ndarray:
    # Normalised frequencies in FFT order. Kovesi's grid spans [-0.5, 0.5) / n for even sizes and
    # [-0.5, 0.5] / (n - 1) for odd ones.
    freq = np.fft.fftfreq(n)
    if n % 2:
        freq = freq * n / (n - 1) if n > 1 else freq
    return freq


@lru_cache(maxsize=8)
def _filter_bank(shape: tuple[int, int]) -> _FilterBank:
    rows, cols = shape
    fy = _frequency_axis(rows)[:, None]
    fx = _frequency_axis(cols)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0  # avoid log(0); the DC term is zeroed below
    theta = np.arctan2(-fy, fx)  # image rows grow downwards
    sin_t, cos_t = np.sin(theta), np.cos(theta)

    lowpass = 1.0 / (1.0 + (radius / LOWPASS_CUTOFF) ** (2 * LOWPASS_ORDER))
    log_sigma = math.log(SIGMA_ON_F)
    radial = []
    for s in range(N_SCALES):
        f0 = 1.0 / (MIN_WAVELENGTH * SCALE_FACTOR**s)
        g = np.exp(-(np.log(radius / f0) ** 2) / (2 * log_sigma**2)) * lowpass
        g[0, 0] = 0.0
        radial.append(g)
    radial_arr = np.stack(radial)

    # Spatial-domain radial filters (scaled as an orthonormal transform) for the expected noise energy.
    spatial = np.real(np.fft.ifft2(radial_arr)) * math.sqrt(rows * cols)
    sum_an2 = float(np.sum(spatial**2))
    sum_aiaj = 0.0
    for i in range(N_SCALES - 1):
        for j in range(i + 1, N_SCALES):
            sum_aiaj += float(np.sum(spatial[i] * spatial[j]))

    theta_sigma = math.pi / N_ORIENTATIONS / D_THETA_ON_SIGMA
    filters = np.empty((N_ORIENTATIONS, N_SCALES, rows, cols))
    noise_factor = np.empty(N_ORIENTATIONS)
    for o in range(N_ORIENTATIONS):
        angle = o * math.pi / N_ORIENTATIONS
        d_sin = sin_t * math.cos(angle) - cos_t * math.sin(angle)
        d_cos = cos_t * math.cos(angle) + sin_t * math.sin(angle)
        d_theta = np.abs(np.arctan2(d_sin, d_cos))
        spread = np.exp(-(d_theta**2) / (2 * theta_sigma**2))
        filters[o] = radial_arr * spread
        em_n = float(np.sum(filters[o, 0] ** 2))
        # Noise power per unit filter energy from the median of a Rayleigh distribution:
        # mean(|n|^2) = median(|n|^2) / ln 2; expected total noise energy (Kovesi 1999).
        noise_energy2_per_median = (2 * sum_an2 + 4 * sum_aiaj) / (math.log(2.0) * em_n)
        tau_per_root_median = math.sqrt(noise_energy2_per_median / 2)
        rayleigh_mean = math.sqrt(math.pi / 2)
        rayleigh_sigma = math.sqrt(2 - math.pi / 2)
        noise_factor[o] = tau_per_root_median * (rayleigh_mean + NOISE_K * rayleigh_sigma) / NOISE_RESCALE
    filters.setflags(write=False)
    noise_factor.setflags(write=False)
    return _FilterBank(shape, filters, noise_factor)


def phase_congruency(images: np.ndarray) -> np.ndarray:
    """Phase congruency (values in [0, 1]) of a 2D image or a stack (B, rows, cols) of images."""
    images = np.asarray(images, dtype=np.float64)
    single = images.ndim == 2
    if single:
        images = images[None]
    bank = _filter_bank(tuple(int(s) for s in images.shape[1:]))
    out = np.empty(images.shape)
    for start in range(0, images.shape[0], _BATCH):
        batch = images[start : start + _BATCH]
        spectrum = sfft.fft2(batch, workers=-1)
        energy_all = np.zeros(batch.shape)
        amplitude_all = np.zeros(batch.shape)
        for o in range(N_ORIENTATIONS):
            # responses[b, s] = e + i·o: even- and odd-symmetric filter outputs of scale s.
            responses = sfft.ifft2(spectrum[:, None] * bank.filters[o][None], workers=-1, overwrite_x=True)
            amplitude = np.abs(responses)
            amplitude_all += amplitude.sum(axis=1)
            total = responses.sum(axis=1)  # (sum_n e_n) + i (sum_n o_n)
            total_abs = np.abs(total)
            norm = total_abs + EPSILON
            mean_even = (total.real / norm)[:, None]
            mean_odd = (total.imag / norm)[:, None]
            # sum_n (e_n·mean_even + o_n·mean_odd) = |total|² / norm; the phase deviation term
            # sum_n |e_n·mean_odd - o_n·mean_even| needs every scale.
            deviation = responses.imag * mean_even
            deviation -= responses.real * mean_odd
            np.abs(deviation, out=deviation)
            energy = total_abs * total_abs / norm - deviation.sum(axis=1)
            finest = amplitude[:, 0].reshape(batch.shape[0], -1)
            threshold = np.sqrt(np.median(finest * finest, axis=1)) * bank.noise_factor[o]
            energy -= threshold[:, None, None]
            np.maximum(energy, 0.0, out=energy)
            energy_all += energy
        with np.errstate(divide="ignore", invalid="ignore"):
            pc = np.where(amplitude_all > 0, energy_all / amplitude_all, 0.0)
        out[start : start + _BATCH] = pc
    return out[0] if single else out


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Scharr gradient magnitude (zero padding, output of the input's size) of a 2D image."""
    gx = signal.convolve2d(image, SCHARR_X, mode="same", boundary="fill")
    gy = signal.convolve2d(image, SCHARR_X.T, mode="same", boundary="fill")
    return np.sqrt(gx * gx + gy * gy)


def downsample_factor(shape: tuple[int, ...]) -> int:
    """The paper's downsampling factor ``max(1, round(min(rows, cols) / 256))`` (halves round up)."""
    return max(1, int(math.floor(min(shape[-2:]) / 256.0 + 0.5)))


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """F×F average filter (zero padding, kernel anchored as MATLAB's ``conv2(..., 'same')``), every F-th pixel."""
    image = np.asarray(image, dtype=np.float64)
    if factor <= 1:
        return image
    full = signal.convolve2d(image, np.full((factor, factor), 1.0 / factor**2), mode="full")
    offset = factor // 2
    rows, cols = image.shape
    same = full[offset : offset + rows, offset : offset + cols]
    return same[::factor, ::factor]


def _fsim_prepared(pred: np.ndarray, ref: np.ndarray, pc_pred: np.ndarray, pc_ref: np.ndarray) -> float:
    g_pred = gradient_magnitude(pred)
    g_ref = gradient_magnitude(ref)
    s_pc = (2 * pc_pred * pc_ref + T1) / (pc_pred**2 + pc_ref**2 + T1)
    s_g = (2 * g_pred * g_ref + T2) / (g_pred**2 + g_ref**2 + T2)
    s_l = s_pc * s_g
    pc_m = np.maximum(pc_pred, pc_ref)
    total = float(np.sum(pc_m))
    if total <= 0.0:
        return float(np.mean(s_l))
    return float(np.sum(s_l * pc_m) / total)


def fsim_batch(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """FSIM of each pair in two stacks (B, rows, cols) of images in [0, 1]; returns B scores."""
    preds = np.asarray(preds, dtype=np.float64)
    refs = np.asarray(refs, dtype=np.float64)
    if preds.shape != refs.shape or preds.ndim != 3:
        raise ValueError(f"fsim_batch needs two stacks of one shape (B, rows, cols), got {preds.shape}, {refs.shape}")
    factor = downsample_factor(preds.shape)
    if factor > 1:
        preds = np.stack([downsample(p, factor) for p in preds])
        refs = np.stack([downsample(r, factor) for r in refs])
    pc_pred = phase_congruency(preds)
    pc_ref = phase_congruency(refs)
    return np.array([_fsim_prepared(preds[i], refs[i], pc_pred[i], pc_ref[i]) for i in range(preds.shape[0])])


def fsim(pred: np.ndarray, ref: np.ndarray) -> float:
    """Grayscale FSIM of two 2D images in [0, 1] (1 = identical; symmetric in its arguments)."""
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim != 2:
        raise ValueError(f"fsim needs two 2D images of one shape, got {pred.shape} and {ref.shape}")
    return float(fsim_batch(pred[None], ref[None])[0])


def fsim_axial(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray | None = None,
    axis: int = 2,
    min_fraction: float = MIN_SLICE_MASK_FRACTION,
) -> float:
    """Mean FSIM over the axial slices with >= 1 % mask voxels, each cropped to the mask's bounding box.

    See :func:`mrsynth_cli.metrics.image.axial_crops` for the slices and the crop.
    """
    preds, refs = axial_crops(pred, ref, mask, axis, min_fraction)
    return float(np.mean(fsim_batch(preds, refs)))
