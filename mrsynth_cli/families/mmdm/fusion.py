"""Cross-modal dynamic fusion eps^0 (MMDM eq. 4).

The paper gives the fusion's inputs (the three independent predictions, the three sources and t)
and its role ("adaptively aggregates complementary information ... spatially consistent"), not its
layers. Here a time-conditioned Restormer-UNet reads all six and outputs, per path and per voxel, a
weight logit and one residual correction: ``x_0 = sum_m softmax_m(w)_m * x^m_0 + r``. The weights are
the "dynamic" part (they change with position, t and the inputs); the residual lets the fusion add
what no single path got. The output convolution starts at zero, so an untrained fusion is the mean
of the paths. (The third-party copy stacks two plain Restormer blocks and a second UNet instead.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrsynth_cli.families.mmdm.network import RestormerUNet

__all__ = ["DynamicFusion"]


class DynamicFusion(nn.Module):
    """Voxel-wise softmax weighting of the paths' predictions plus a residual, from a Restormer-UNet.

    Args:
        slices: channels of one 2.5D window.
        paths: number of paths fused.
        channels, blocks: the fusion network's widths and blocks per level.
        ffn_expansion: GDFN expansion factor.
        time_channels: width of the shared time embedding.
    """

    def __init__(
        self,
        slices: int,
        paths: int,
        channels: tuple[int, ...],
        blocks: tuple[int, ...],
        ffn_expansion: float,
        time_channels: int,
    ) -> None:
        super().__init__()
        self.slices, self.paths = slices, paths
        heads = tuple(1 for _ in channels)
        self.network = RestormerUNet(
            2, 2 * paths * slices, (paths + 1) * slices, channels, blocks, heads, ffn_expansion, time_channels
        )
        nn.init.zeros_(self.network.out.weight)
        nn.init.zeros_(self.network.out.bias)

    def forward(self, predictions: list[Tensor], sources: list[Tensor], temb: Tensor) -> Tensor:
        out = self.network(torch.cat([*predictions, *sources], dim=1), temb)
        b, _, *spatial = out.shape
        logits = out[:, : self.paths * self.slices].reshape(b, self.paths, self.slices, *spatial)
        weights = logits.softmax(dim=1)
        residual = out[:, self.paths * self.slices :]
        return (weights * torch.stack(predictions, dim=1)).sum(dim=1) + residual
