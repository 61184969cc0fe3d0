"""Similar cooperative filtering (Jiang et al. 2023, Sec. 2.1, eq. 4), differentiable.

Every down-path feature ``f`` of the latent network is filtered before it joins its up-path branch:

    f* = phi^-1( delta(f_A^(i)), delta(sum_j f_D^(j)), gamma(sum_j f_H^(j)), gamma(sum_j f_V^(j)) )

* ``phi`` is the ``i``-level 2D DWT (:mod:`~mrsynth_cli.families.cola_diff.wavelets`).
* ``delta`` is *similar block matching* with collaborative shrinkage, the BM3D idea (Dabov et al.
  2008) the paper cites: the map is cut into overlapping ``p x p`` blocks; for every block the ``K``
  most similar blocks of the whole map (smallest squared distance over all channels: global
  information, as the paper asks) are grouped; each group is transformed along the group axis by an
  orthonormal DCT, the non-DC coefficients are soft-thresholded (shrunk) channel-wise, and the group is
  transformed back at the reference block, which replaces it; overlapping blocks are averaged.
  (BM3D also aggregates the estimates every group makes of its other members; that costs a second
  scatter over all groups for little change here, so each block keeps its own group's estimate.)
* ``gamma`` is soft thresholding.

**How the sums are read.** Details of different levels have different sizes, so ``sum_j f_D^(j)``
is taken on the input grid: the summed diagonal detail image ``D = phi^-1(0, 0, 0, {f_D^(j)}_j)``
(likewise ``H``, ``V``), which by linearity of ``phi^-1`` satisfies ``f = A + H + V + D`` exactly with
``A = phi^-1(f_A^(i), 0, 0, 0)``. The filter is then ``f* = phi^-1(delta(f_A^(i))) + delta(D) +
gamma(H) + gamma(V)``: with zero thresholds it is the identity, so it starts harmless and learns how
much to shrink.

**Thresholds.** Each threshold is ``lambda_c * sigma_{b,c}``: a learnable non-negative weight per
channel (``softplus`` of a parameter) times the noise level of that channel of that sample, estimated
from the finest diagonal coefficients with Donoho's median absolute deviation
(``median(|f_D^(1)|) / 0.6745``, treated as a constant). So the filter adapts to the feature scale
and to the noise level of each timestep.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsynth_cli.families.cola_diff.wavelets import DWT2D, WaveletBands

__all__ = ["soft_threshold", "dct_matrix", "BlockMatchingShrinkage", "SoftThresholding", "SimilarCooperativeFilter"]


def soft_threshold(x: Tensor, threshold: Tensor) -> Tensor:
    """``sign(x) max(|x| - threshold, 0)`` (as ``x - clamp(x, -threshold, threshold)``), differentiable in both."""
    return x - torch.clamp(x, -threshold, threshold)


def dct_matrix(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal DCT-II matrix (rows are basis vectors; row 0 is the constant, the group mean)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    m = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype)


def _noise_sigma(finest_diagonal: Tensor) -> Tensor:
    """Donoho's noise level per (sample, channel): median absolute diagonal coefficient / 0.6745."""
    flat = finest_diagonal.detach().flatten(2).abs()
    return (flat.median(dim=-1).values / 0.6745).clamp_min(1e-6)  # (B, C)


def _positive(raw: Tensor) -> Tensor:
    return F.softplus(raw)


class SoftThresholding(nn.Module):
    """``gamma``: channel-wise soft thresholding at ``softplus(raw_c) * sigma_{b,c}``.

    Args:
        channels: number of feature channels.
        init: initial threshold weight ``lambda`` (in noise standard deviations).
    """

    def __init__(self, channels: int, init: float = 0.1) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.full((channels,), math.log(math.expm1(init))))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        threshold = _positive(self.raw)[None, :] * sigma  # (B, C)
        return soft_threshold(x, threshold[:, :, None, None])


class BlockMatchingShrinkage(nn.Module):
    """``delta``: group similar blocks (global search) and shrink each group collaboratively.

    Args:
        channels: number of feature channels.
        block_size: block side ``p`` (reduced to the map size when the map is smaller).
        block_stride: step between block origins (1: every position; 2: a quarter of the blocks).
        group_size: ``K``, blocks per group, the reference block included.
        init: initial shrinkage threshold weight ``lambda`` (in noise standard deviations).
    """

    def __init__(
        self, channels: int, block_size: int = 3, block_stride: int = 1, group_size: int = 8, init: float = 0.1
    ) -> None:
        super().__init__()
        self.channels = channels
        self.block_size = block_size
        self.block_stride = block_stride
        self.group_size = group_size
        self.raw = nn.Parameter(torch.full((channels,), math.log(math.expm1(init))))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = min(self.block_size, h, w)
        s = max(1, min(self.block_stride, p))
        pad_h = (-(h - p)) % s
        pad_w = (-(w - p)) % s
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if (pad_h or pad_w) else x
        hp, wp = xp.shape[-2:]
        blocks = F.unfold(xp, kernel_size=p, stride=s).transpose(1, 2)  # (B, N, C*p*p)
        n = blocks.shape[1]
        k = min(self.group_size, n)
        # 1. Block matching: the K nearest blocks (squared distance over all channels; itself first).
        with torch.no_grad():
            distance = torch.cdist(blocks.detach(), blocks.detach()).pow(2)
            distance.diagonal(dim1=1, dim2=2).fill_(-1.0)
            index = distance.topk(k, dim=-1, largest=False).indices  # (B, N, K)
        groups = blocks[torch.arange(b, device=x.device)[:, None, None], index]  # (B, N, K, D)
        # 2. Collaborative shrinkage: orthonormal DCT along the group, non-DC coefficients shrunk
        #    (the DC coefficient, the group mean, has a zero threshold).
        transform = dct_matrix(k, x.dtype).to(x.device)
        coeffs = torch.matmul(transform, groups)  # (B, N, K, D)
        threshold = (_positive(self.raw)[None, :] * sigma).repeat_interleave(p * p, dim=1)  # (B, D)
        keep_dc = torch.ones(k, 1, dtype=x.dtype, device=x.device)
        keep_dc[0] = 0.0
        shrunk = soft_threshold(coeffs, threshold[:, None, None, :] * keep_dc)
        # 3. The reference block's estimate: the inverse transform evaluated at its place in the group.
        estimate = torch.einsum("k,bnkd->bnd", transform[:, 0], shrunk)  # (B, N, D)
        # ... then over overlapping blocks (overlap-add, divided by the coverage).
        folded = F.fold(estimate.transpose(1, 2), (hp, wp), kernel_size=p, stride=s)
        coverage = F.fold(torch.ones_like(estimate[:1]).transpose(1, 2), (hp, wp), kernel_size=p, stride=s)
        return (folded / coverage)[..., :h, :w]


class SimilarCooperativeFilter(nn.Module):
    """The paper's eq. 4 on a ``(B, C, H, W)`` feature map (see the module docstring).

    Args:
        channels: feature channels.
        wavelet: orthogonal PyWavelets wavelet of ``phi``.
        levels: decomposition levels ``i``.
        block_size, block_stride, group_size: block matching of ``delta``.
    """

    def __init__(
        self,
        channels: int,
        wavelet: str = "haar",
        levels: int = 1,
        block_size: int = 3,
        block_stride: int = 1,
        group_size: int = 8,
    ) -> None:
        super().__init__()
        self.dwt = DWT2D(wavelet, levels)
        self.delta_approx = BlockMatchingShrinkage(channels, block_size, block_stride, group_size)
        self.delta_diagonal = BlockMatchingShrinkage(channels, block_size, block_stride, group_size)
        self.gamma_horizontal = SoftThresholding(channels)
        self.gamma_vertical = SoftThresholding(channels)

    def forward(self, f: Tensor) -> Tensor:
        # In float32 (or float64) even under mixed precision: the transform must invert exactly.
        dtype = f.dtype if f.dtype in (torch.float32, torch.float64) else torch.float32
        with torch.autocast(device_type=f.device.type, enabled=False):
            return self._filter(f.to(dtype)).to(f.dtype)

    def _filter(self, f: Tensor) -> Tensor:
        bands = self.dwt(f)
        sigma = _noise_sigma(bands.details[0][2])
        images = self.dwt.band_images(bands, "HVD")
        approx = self.delta_approx(bands.approx, sigma)
        zeros = [tuple(torch.zeros_like(t) for t in level) for level in bands.details]
        approx_image = self.dwt.inverse(WaveletBands(approx, zeros, bands.sizes))
        return (
            approx_image
            + self.delta_diagonal(images["D"], sigma)
            + self.gamma_horizontal(images["H"], sigma)
            + self.gamma_vertical(images["V"], sigma)
        )
