"""MS-SPADE (paper eq. 1, supplement Table B): source latents -> target-like latents, one switchable
gamma/beta set per target modality.

Each :class:`SwitchableSPADE` holds one MONAI ``SPADE`` per target: instance normalisation (per-channel
mean/std, shared) followed by the spatially varying ``gamma^tar(h)``, ``beta^tar(h)`` of the chosen
target, computed from the block's own input ``h`` (eq. 1 writes them as functions of ``h``; there is no
semantic map in image translation). MONAI applies ``norm(h) * (1 + gamma) + beta``, eq. 1 with
``gamma`` re-parameterised around 1. Only the chosen target's set takes part in a sample's forward pass,
so the others get no gradient from it.

The stack (Table B): ``C7 -> IN -> ReLU``, ``spade_res_blocks`` residual blocks ``C3 ReLU IN C3 ReLU IN``,
``spade_blocks`` SPADE residual blocks ``C3 ReLU MS-SPADE C3 ReLU MS-SPADE``, ``C7`` out to the latent
channels. Deviation: constant ``spade_channels`` width through the stack (Table B widens to 256 inside).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrsynth_cli.families.aldm.config import AldmConfig

__all__ = ["SwitchableSPADE", "SPADEResBlock", "MSSPADE"]


def _conv(spatial_dims: int, cin: int, cout: int, kernel: int) -> nn.Module:
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(cin, cout, kernel, padding=kernel // 2)


def _instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(channels, affine=False)


class SwitchableSPADE(nn.Module):
    """One SPADE (gamma/beta network) per target modality, chosen per sample (eq. 1)."""

    def __init__(self, channels: int, num_targets: int, hidden: int, spatial_dims: int) -> None:
        super().__init__()
        from monai.networks.blocks.spade_norm import SPADE

        self.norms = nn.ModuleList(
            SPADE(label_nc=channels, norm_nc=channels, kernel_size=3, spatial_dims=spatial_dims,
                  hidden_channels=hidden, norm="INSTANCE", norm_params={"affine": False})
            for _ in range(num_targets)
        )

    def forward(self, h: Tensor, condition: Tensor, target: Tensor) -> Tensor:
        """``h`` normalised and modulated by the set of ``target[i]`` for each sample ``i``."""
        out = torch.zeros_like(h)
        for t in torch.unique(target).tolist():
            rows = torch.nonzero(target == t).flatten()
            out = out.index_copy(0, rows, self.norms[t](h[rows], condition[rows]))
        return out


class SPADEResBlock(nn.Module):
    """``C3 ReLU MS-SPADE C3 ReLU MS-SPADE`` plus the identity; modulation computed from the block input."""

    def __init__(self, channels: int, num_targets: int, hidden: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv_0 = _conv(spatial_dims, channels, channels, 3)
        self.norm_0 = SwitchableSPADE(channels, num_targets, hidden, spatial_dims)
        self.conv_1 = _conv(spatial_dims, channels, channels, 3)
        self.norm_1 = SwitchableSPADE(channels, num_targets, hidden, spatial_dims)

    def forward(self, h: Tensor, target: Tensor) -> Tensor:
        dx = self.norm_0(torch.relu(self.conv_0(h)), h, target)
        dx = self.norm_1(torch.relu(self.conv_1(dx)), h, target)
        return h + dx


class _ResBlock(nn.Module):
    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(spatial_dims, channels, channels, 3), nn.ReLU(), _instance_norm(spatial_dims, channels),
            _conv(spatial_dims, channels, channels, 3), nn.ReLU(), _instance_norm(spatial_dims, channels),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class MSSPADE(nn.Module):
    """The MS-SPADE block: ``forward(z_src, target_index) -> z^tar_src`` (target-like latents)."""

    def __init__(self, config: AldmConfig) -> None:
        super().__init__()
        dims, ch, d = config.spatial_dims, config.spade_channels, config.ae_latent_channels
        n = len(config.contrasts)
        self.stem = nn.Sequential(_conv(dims, d, ch, 7), _instance_norm(dims, ch), nn.ReLU())
        self.res_blocks = nn.Sequential(*[_ResBlock(ch, dims) for _ in range(config.spade_res_blocks)])
        self.spade_blocks = nn.ModuleList(
            SPADEResBlock(ch, n, config.spade_hidden, dims) for _ in range(config.spade_blocks)
        )
        self.out = _conv(dims, ch, d, 7)

    def forward(self, z: Tensor, target: Tensor) -> Tensor:
        h = self.res_blocks(self.stem(z))
        for block in self.spade_blocks:
            h = block(h, target)
        return self.out(h)
