"""A differentiable multi-level 2D discrete wavelet transform (Mallat) in torch, with its exact inverse.

CoLa-Diff's similar cooperative filtering (Jiang et al. 2023, eq. 4) works on the wavelet
decomposition ``phi`` of a feature map: the approximation ``f_A^(i)`` after ``i`` levels and the
horizontal, vertical and diagonal details ``f_H^(j), f_V^(j), f_D^(j)`` of every level ``j``.

Conventions (checked against PyWavelets in ``tests/test_cola_diff.py``):

* Filter banks come from :class:`pywt.Wavelet` (``dec_lo``, ``dec_hi``); only orthogonal wavelets
  (``haar``, ``db*``, ``sym*``, ``coif*``) are accepted, because the inverse is the transpose.
* Boundary handling is PyWavelets' ``mode="periodization"``: a level maps an ``H x W`` map to four
  ``H/2 x W/2`` bands, ``a[k] = sum_n dec_lo[n] x[(2k + L/2 - n) mod N]``. An odd size is first
  zero-padded by one at the end (and cropped after the inverse), so every size works.
* Band names follow :func:`pywt.dwt2`: ``H`` is high-pass along the rows' axis (height, dim -2) and
  low-pass along the width, ``V`` the other way round, ``D`` high-pass along both.

The periodised analysis operator of an orthogonal filter bank is an orthogonal matrix, so the
synthesis is its transpose (a strided transposed convolution followed by folding the periodic
overhang back): ``idwt2(dwt2(x)) == x`` up to float rounding, for any number of levels (to 1e-15 in
float64 for haar, db* and coif*; PyWavelets tabulates some symlets less precisely, e.g. sym3 is
orthonormal only to 5e-12, which then bounds the reconstruction error).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mrsynth_cli.errors import InputError

__all__ = ["WaveletBands", "DWT2D", "wavelet_filters"]


def wavelet_filters(name: str) -> tuple[list[float], list[float]]:
    """``(dec_lo, dec_hi)`` of an orthogonal PyWavelets wavelet.

    Raises:
        InputError: unknown or non-orthogonal wavelet.
    """
    import pywt

    try:
        wavelet = pywt.Wavelet(name)
    except ValueError as exc:
        raise InputError(
            f"unknown wavelet '{name}'", "use an orthogonal PyWavelets name, e.g. haar, db2, sym4"
        ) from exc
    if not wavelet.orthogonal:
        raise InputError(
            f"wavelet '{name}' is not orthogonal", "use haar, db*, sym* or coif* (the inverse is the transpose)"
        )
    return list(wavelet.dec_lo), list(wavelet.dec_hi)


@dataclass
class WaveletBands:
    """A multi-level decomposition: ``approx`` after the last level, ``details[j] = (H, V, D)`` of level j+1.

    ``sizes[j]`` is the (possibly odd) spatial size that level ``j+1`` decomposed, so the inverse can
    crop the padding it added.
    """

    approx: Tensor
    details: list[tuple[Tensor, Tensor, Tensor]]
    sizes: list[tuple[int, int]]


def _wrap_index(n: int, left: int, right: int, device: torch.device) -> Tensor:
    return torch.arange(-left, n + right, device=device) % n


class DWT2D(torch.nn.Module):
    """Multi-level periodised 2D DWT and inverse of ``(B, C, H, W)`` tensors, differentiable.

    Args:
        wavelet: an orthogonal PyWavelets wavelet name.
        levels: number of decomposition levels (``i`` in the paper's eq. 4).
    """

    def __init__(self, wavelet: str = "haar", levels: int = 1) -> None:
        super().__init__()
        if levels < 1:
            raise InputError(f"wavelet levels must be >= 1, got {levels}", "use 1 or more levels")
        lo, hi = wavelet_filters(wavelet)
        self.wavelet = wavelet
        self.levels = levels
        self.length = len(lo)
        # Correlation kernels: the reversed convolution filters. Bands in pywt order A, H, V, D
        # (first factor along height, second along width).
        lo_r = torch.tensor(lo[::-1], dtype=torch.float64)
        hi_r = torch.tensor(hi[::-1], dtype=torch.float64)
        kernels = torch.stack(
            [torch.outer(lo_r, lo_r), torch.outer(hi_r, lo_r), torch.outer(lo_r, hi_r), torch.outer(hi_r, hi_r)]
        )
        self.register_buffer("kernels", kernels[:, None], persistent=False)  # (4, 1, L, L), float64; cast at use

    # -- one level ------------------------------------------------------------------------------------

    def _analysis(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, c, h, w = x.shape
        half = self.length // 2
        rows = _wrap_index(h, half - 1, half, x.device)
        cols = _wrap_index(w, half - 1, half, x.device)
        padded = x.index_select(2, rows).index_select(3, cols)
        # One depthwise convolution: every channel with the four band kernels.
        kernels = self.kernels.to(x.dtype).repeat(c, 1, 1, 1)  # (4C, 1, L, L)
        out = F.conv2d(padded, kernels, stride=2, groups=c).reshape(b, c, 4, h // 2, w // 2)
        return out[:, :, 0], out[:, :, 1], out[:, :, 2], out[:, :, 3]

    def _synthesis(self, a: Tensor, dh: Tensor, dv: Tensor, dd: Tensor) -> Tensor:
        b, c, h2, w2 = a.shape
        h, w = 2 * h2, 2 * w2
        bands = torch.stack([a, dh, dv, dd], dim=2).reshape(b, c * 4, h2, w2)
        # The transpose of the strided correlation, on the padded (wrapped) grid ...
        kernels = self.kernels.to(a.dtype).repeat(c, 1, 1, 1)  # (4C, 1, L, L)
        full = F.conv_transpose2d(bands, kernels, stride=2, output_padding=1, groups=c)  # (B, C, H+L-1, W+L-1)
        # ... then the transpose of the wrap-padding: add every padded position back where it came from.
        half = self.length // 2
        rows = _wrap_index(h, half - 1, half, a.device)
        cols = _wrap_index(w, half - 1, half, a.device)
        out_rows = torch.zeros(b, c, h, w + self.length - 1, dtype=a.dtype, device=a.device)
        out_rows = out_rows.index_add(2, rows, full)
        out = torch.zeros(b, c, h, w, dtype=a.dtype, device=a.device)
        return out.index_add(3, cols, out_rows)

    # -- several levels -------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> WaveletBands:
        """Decompose ``x`` (B, C, H, W) into ``levels`` levels."""
        if x.dim() != 4:
            raise InputError(f"the 2D wavelet transform needs (B, C, H, W), got shape {tuple(x.shape)}", "pass 2D maps")
        details, sizes = [], []
        a = x
        for _ in range(self.levels):
            h, w = a.shape[-2:]
            sizes.append((h, w))
            a = F.pad(a, (0, w % 2, 0, h % 2))  # odd sizes: one zero row/column, cropped by the inverse
            a, dh, dv, dd = self._analysis(a)
            details.append((dh, dv, dd))
        return WaveletBands(a, details, sizes)

    def inverse(self, bands: WaveletBands) -> Tensor:
        """Reconstruct from (possibly modified) bands; exact inverse of :meth:`forward`."""
        a = bands.approx
        for (dh, dv, dd), (h, w) in zip(reversed(bands.details), reversed(bands.sizes), strict=True):
            a = self._synthesis(a, dh, dv, dd)[..., :h, :w]
        return a

    def band_images(self, bands: WaveletBands, which: str = "AHVD") -> dict[str, Tensor]:
        """The input-sized images of the approximation and of the summed H, V and D details.

        By linearity of the inverse, ``x == A + H + V + D`` exactly, where ``A`` reconstructs the
        approximation alone and ``H = phi^-1(0, {f_H^(j)}_j, 0, 0) = sum_j phi^-1(f_H^(j))``: the
        horizontal details of every level summed on the input grid (the paper's ``sum_j f_H^(j)``).

        Args:
            bands: a decomposition from :meth:`forward`.
            which: the images wanted, a subset of ``"AHVD"``.
        """
        zeros = [tuple(torch.zeros_like(t) for t in level) for level in bands.details]
        out = {}
        if "A" in which:
            out["A"] = self.inverse(WaveletBands(bands.approx, zeros, bands.sizes))
        approx = torch.zeros_like(bands.approx)
        for index, name in enumerate("HVD"):
            if name not in which:
                continue
            only = [
                tuple(t if k == index else z for k, (t, z) in enumerate(zip(level, zero, strict=True)))
                for level, zero in zip(bands.details, zeros, strict=True)
            ]
            out[name] = self.inverse(WaveletBands(approx, only, bands.sizes))
        return out
