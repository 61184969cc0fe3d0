"""MRDiff's network (Fig. 1): Haar sub-bands in, encoder ``E_phi``, generator ``G_theta``, physics module,
condition decoder ``D_xi``, IWT out.

* Input (Sec. 2.2): ``x_t`` (1 channel) and the clean conditions ``y`` (K channels) are each split
  into LL/LH/HL/HH sub-bands; the ``4(1 + K)`` band channels at half resolution enter the encoder.
* ``E_phi(x_t, y, t)``: a UNet encoder (ADM-style residual blocks with the timestep embedding,
  optional self-attention) and a middle block; its output is ``e_t``.
* ``G_theta``: a UNet decoder over ``e_t`` and the encoder's skips that outputs the target's four
  sub-bands; the IWT gives ``x0_hat`` (the model predicts x_0, eq. 3).
* ``D_xi``: a second decoder that outputs the K conditions' sub-bands; the IWT gives ``y_hat``. It
  reads ``M_sigma(e_t)`` (eq. 8) or, with ``physics = false``, ``e_t`` itself (eq. 4); the skips
  only when ``decoder_skips`` (see :class:`~mrsynth_cli.families.mrdiff.config.MRDiffConfig`).

Residual blocks, down/upsampling and the timestep embedding are the project's (shared with CoLa-Diff).
Deviation from the released code: no spectral normalisation of the embedding layers (the paper does
not mention it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrsynth_cli.families.cola_diff.blocks import Downsample, PlainResBlock, Upsample, group_norm, timestep_embedding
from mrsynth_cli.families.mrdiff.config import MRDiffConfig
from mrsynth_cli.families.mrdiff.physics import PhysicsModule
from mrsynth_cli.families.mrdiff.subbands import Subbands

__all__ = ["SelfAttention", "MRDiffNetwork"]


class SelfAttention(nn.Module):
    """Global multi-head self-attention over the pixels of a feature map, with a residual join."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class _Level(nn.Module):
    """Residual blocks (each followed by attention if asked) at one resolution."""

    def __init__(self, channels_in: int, channels: int, blocks: int, emb: int, attention: bool, heads: int, dropout):
        super().__init__()
        self.blocks = nn.ModuleList(
            [PlainResBlock(channels_in if i == 0 else channels, channels, emb, dropout=dropout) for i in range(blocks)]
        )
        self.attention = nn.ModuleList(
            [SelfAttention(channels, heads) if attention else nn.Identity() for _ in range(blocks)]
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for block, attention in zip(self.blocks, self.attention, strict=True):
            x = attention(block(x, emb))
        return x


class _Decoder(nn.Module):
    """The mirror of the encoder, from the bottleneck to ``out_channels`` images via their sub-bands."""

    def __init__(self, config: MRDiffConfig, emb: int, out_channels: int, skips: bool) -> None:
        super().__init__()
        chans = list(config.channels)
        self.skips = skips
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in reversed(range(len(chans))):
            width_in = chans[i] + (chans[i] if skips else 0)
            self.levels.append(
                _Level(width_in, chans[i], config.num_res_blocks, emb, config.attention_levels[i], config.heads,
                       config.dropout)
            )
            self.ups.append(Upsample(chans[i], chans[i - 1]) if i > 0 else nn.Identity())
        self.out = nn.Sequential(group_norm(chans[0]), nn.SiLU(), nn.Conv2d(chans[0], 4 * out_channels, 3, padding=1))
        self.subbands = Subbands()

    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor) -> Tensor:
        """``skips`` are the encoder's level outputs (their sizes set the upsampling even without skips)."""
        for j, (level, up) in enumerate(zip(self.levels, self.ups, strict=True)):
            i = len(skips) - 1 - j
            if self.skips:
                h = torch.cat([h, skips[i]], dim=1)
            h = level(h, emb)
            if i > 0:
                h = up(h, skips[i - 1].shape[-2:])
        return self.subbands.merge(self.out(h))


class MRDiffNetwork(nn.Module):
    """``E_phi``, ``G_theta``, ``M_sigma`` and ``D_xi`` of one MRDiff model.

    ``forward(x_t, y, t, acquisition)`` returns ``(x0_hat, y_hat, e_t)``; ``acquisition`` is (B, K, 3)
    (TR, TE, TI in seconds, TI = 0 for none) in the order of ``config.inputs``.
    """

    def __init__(self, config: MRDiffConfig) -> None:
        super().__init__()
        self.config = config
        chans = list(config.channels)
        k = len(config.inputs)
        emb = 4 * chans[0]
        self.time_dim = chans[0]
        self.time_mlp = nn.Sequential(nn.Linear(chans[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.subbands = Subbands()
        self.stem = nn.Conv2d(4 * (1 + k), chans[0], 3, padding=1)
        self.down_levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, width in enumerate(chans):
            self.down_levels.append(
                _Level(chans[i - 1] if i > 0 else chans[0], width, config.num_res_blocks, emb,
                       config.attention_levels[i], config.heads, config.dropout)
            )
            self.downs.append(Downsample(width, width) if i < len(chans) - 1 else nn.Identity())
        self.middle = _Level(chans[-1], chans[-1], 2, emb, config.attention_levels[-1], config.heads, config.dropout)
        self.generator = _Decoder(config, emb, 1, skips=True)
        self.decoder = _Decoder(config, emb, k, skips=config.decoder_skips)
        self.physics = (
            PhysicsModule(chans[-1], k, config.map_channels, config.t1_unit_s, config.t2_unit_s)
            if config.physics
            else None
        )

    def encode(self, x_t: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """``E_phi``: (e_t, skips, timestep embedding)."""
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))
        h = self.stem(torch.cat([self.subbands.split(x_t), self.subbands.split(y)], dim=1))
        skips = []
        for level, down in zip(self.down_levels, self.downs, strict=True):
            h = level(h, emb)
            skips.append(h)
            h = down(h)
        return self.middle(h, emb), skips, emb

    def generate(self, e_t: Tensor, skips: list[Tensor], emb: Tensor) -> Tensor:
        """``G_theta``: the x_0 estimate (B, 1, H, W)."""
        return self.generator(e_t, skips, emb)

    def reconstruct(self, e_t: Tensor, skips: list[Tensor], emb: Tensor, acquisition: Tensor) -> Tensor:
        """``D_xi(M_sigma(e_t))`` (or ``D_xi(e_t)`` without physics): the conditions (B, K, H, W)."""
        features = self.physics(e_t, acquisition) if self.physics is not None else e_t
        return self.decoder(features, skips, emb)

    def forward(self, x_t: Tensor, y: Tensor, t: Tensor, acquisition: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e_t, skips, emb = self.encode(x_t, y, t)
        return self.generate(e_t, skips, emb), self.reconstruct(e_t, skips, emb, acquisition), e_t
