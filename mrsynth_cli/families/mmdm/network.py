"""The time-conditioned Restormer-UNet of every MMDM path and the whole multi-path model.

**Why not MONAI's ``Restormer``.** ``monai.networks.nets.Restormer`` (MONAI >= 1.5) is the image
restoration network: its ``forward(x)`` takes no timestep, so it cannot be a diffusion module as it
stands. Its building block :class:`monai.networks.nets.restormer.MDTATransformerBlock` (multi-Dconv
head transposed attention + gated-Dconv feed-forward, Zamir et al. 2022) is used here unchanged;
what is added is the UNet around it with a time embedding, injected as a learned per-channel bias
at the entry of every level (as the DDPM ResBlocks do). The blocks run MDTA without MONAI's
``flash_attention`` path, which reads its temperature with ``float()`` and so would not learn it.
"""

from __future__ import annotations

import math

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.restormer import MDTATransformerBlock
from torch import Tensor, nn

from mrsynth_cli.families.mmdm.config import MMDMConfig
from mrsynth_cli.io.contrasts import Contrast

__all__ = ["TimeEmbedding", "RestormerUNet", "MMDMModel"]


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the timestep followed by a two-layer MLP (DDPM's), shared by every path."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, channels * 2), nn.SiLU(), nn.Linear(channels * 2, channels))

    def forward(self, t: Tensor) -> Tensor:
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)
        if self.channels % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return self.mlp(emb)


class _Level(nn.Module):
    """One resolution level: add the projected time embedding, then MDTA + GDFN transformer blocks."""

    def __init__(self, spatial_dims: int, channels: int, blocks: int, heads: int, ffn: float, time_channels: int):
        super().__init__()
        self.time = nn.Linear(time_channels, channels)
        self.blocks = nn.Sequential(
            *[
                MDTATransformerBlock(spatial_dims, channels, heads, ffn, bias=False, layer_norm_use_bias=True)
                for _ in range(blocks)
            ]
        )
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        bias = self.time(temb).reshape(*temb.shape[:1], -1, *([1] * self.spatial_dims))
        return self.blocks(x + bias)


class RestormerUNet(nn.Module):
    """A Restormer-UNet (Zamir et al. 2022) taking a time embedding.

    Encoder levels of MDTA/GDFN blocks with stride-2 convolutions between them, a decoder of
    nearest-neighbour upsampling, skip concatenation, a 1x1 channel reduction and blocks again,
    then a 3x3 output convolution.

    Args:
        spatial_dims: 2 (axial 2.5D windows) or 3.
        in_channels, out_channels: input and output channels.
        channels: widths per level (each level halves the spatial size).
        blocks: transformer blocks per level.
        heads: MDTA heads per level.
        ffn_expansion: GDFN expansion factor.
        time_channels: width of the time embedding given to :meth:`forward`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        blocks: tuple[int, ...],
        heads: tuple[int, ...],
        ffn_expansion: float,
        time_channels: int,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.embed = conv(in_channels, channels[0], kernel_size=3, padding=1)
        self.down_levels = nn.ModuleList(
            _Level(spatial_dims, c, b, h, ffn_expansion, time_channels)
            for c, b, h in zip(channels, blocks, heads, strict=True)
        )
        self.downsample = nn.ModuleList(
            conv(channels[i], channels[i + 1], kernel_size=3, stride=2, padding=1) for i in range(len(channels) - 1)
        )
        self.upsample = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(channels[i + 1], channels[i], 3, padding=1))
            for i in range(len(channels) - 1)
        )
        self.reduce = nn.ModuleList(conv(2 * channels[i], channels[i], kernel_size=1) for i in range(len(channels) - 1))
        self.up_levels = nn.ModuleList(
            _Level(spatial_dims, channels[i], blocks[i], heads[i], ffn_expansion, time_channels)
            for i in range(len(channels) - 1)
        )
        self.out = conv(channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.embed(x)
        skips = []
        for i, level in enumerate(self.down_levels):
            h = level(h, temb)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        for i in reversed(range(len(self.upsample))):
            h = self.upsample[i](h)
            h = self.reduce[i](torch.cat([h, skips[i]], dim=1))
            h = self.up_levels[i](h, temb)
        return self.out(h)


class MMDMModel(nn.Module):
    """Every trainable part of MMDM: the shared time embedding, one path module per bridge, the fusion
    (``variant = "mmdm"``) and the noise-adaptive loss weights (eqs. 8-11, used in training only).

    Tensors are 2.5D windows ``(B, slices, H, W)`` in the bridge space [-1, 1]; dicts are keyed by contrast.
    """

    def __init__(self, config: MMDMConfig) -> None:
        super().__init__()
        from mrsynth_cli.families.mmdm.fusion import DynamicFusion
        from mrsynth_cli.families.mmdm.losses import NoiseAdaptiveWeighting

        self.config = config
        s = config.slices
        self.time_embed = TimeEmbedding(config.time_channels)
        conditions = config.condition_contrasts
        self.paths = nn.ModuleDict(
            {
                c.value: RestormerUNet(
                    2,
                    s * (1 + len(conditions[c])),
                    s,
                    config.channels,
                    config.blocks,
                    config.heads,
                    config.ffn_expansion,
                    config.time_channels,
                )
                for c in config.path_contrasts
            }
        )
        self.fusion = (
            DynamicFusion(
                s,
                len(config.path_contrasts),
                config.fusion_channels,
                config.fusion_blocks,
                config.ffn_expansion,
                config.time_channels,
            )
            if config.variant == "mmdm"
            else None
        )
        self.weighting = NoiseAdaptiveWeighting(len(config.path_contrasts), fused=self.fusion is not None)

    def path_predictions(
        self, x_t: dict[Contrast, Tensor], t: Tensor, sources: dict[Contrast, Tensor], temb: Tensor | None = None
    ) -> dict[Contrast, Tensor]:
        """Independent predictions ``x^m_0 = x^m - eps^m(x^m_t, t, condition)`` of the paths in ``x_t``."""
        temb = self.time_embed(t) if temb is None else temb
        out = {}
        for contrast, state in x_t.items():
            condition = [sources[c] for c in self.config.condition_contrasts[contrast]]
            eps = self.paths[contrast.value](torch.cat([state, *condition], dim=1), temb)
            out[contrast] = sources[contrast] - eps  # the "ysubx" objective: eps^m fits x^m - x_0
        return out

    def forward(
        self, x_t: dict[Contrast, Tensor], t: Tensor, sources: dict[Contrast, Tensor]
    ) -> tuple[Tensor, dict[Contrast, Tensor]]:
        """The cooperative prediction x_0 (eq. 4) and the independent ones.

        With every path present the fusion combines them; if some sources are missing (only at
        inference) or there is no fusion, x_0 is the mean of the available independent predictions.
        """
        temb = self.time_embed(t)
        independent = self.path_predictions(x_t, t, sources, temb)
        everything = len(independent) == len(self.config.path_contrasts)
        if self.fusion is not None and everything:
            order = self.config.path_contrasts
            fused = self.fusion([independent[c] for c in order], [sources[c] for c in order], temb)
        else:
            fused = torch.stack(list(independent.values())).mean(0)
        return fused, independent
