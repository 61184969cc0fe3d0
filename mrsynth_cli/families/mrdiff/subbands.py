"""Haar sub-bands as channels: the frequency-aware decomposition of MRDiff (Sec. 2.2).

A map ``(B, C, H, W)`` becomes ``(B, 4C, H/2, W/2)``: the LL, LH, HL and HH bands of every channel,
band-major (all LL channels first). The transform is the project's one differentiable DWT
(:class:`~mrsynth_cli.families.cola_diff.wavelets.DWT2D`, Haar filters from PyWavelets, periodised,
orthogonal), so :meth:`Subbands.merge` is its exact inverse (IWT).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mrsynth_cli.families.cola_diff.wavelets import DWT2D, WaveletBands

__all__ = ["Subbands"]


class Subbands(torch.nn.Module):
    """One-level Haar DWT to channel-stacked sub-bands, and the exact inverse."""

    def __init__(self) -> None:
        super().__init__()
        self.dwt = DWT2D("haar", levels=1)

    def split(self, x: Tensor) -> Tensor:
        """(B, C, H, W) with even H, W -> (B, 4C, H/2, W/2): [LL | LH | HL | HH]."""
        bands = self.dwt(x)
        horizontal, vertical, diagonal = bands.details[0]
        return torch.cat([bands.approx, horizontal, vertical, diagonal], dim=1)

    def merge(self, stacked: Tensor) -> Tensor:
        """(B, 4C, h, w) -> (B, C, 2h, 2w), the inverse of :meth:`split`."""
        approx, horizontal, vertical, diagonal = stacked.chunk(4, dim=1)
        h, w = approx.shape[-2:]
        return self.dwt.inverse(WaveletBands(approx, [(horizontal, vertical, diagonal)], [(2 * h, 2 * w)]))
