"""CoLa-Diff's networks: the autoencoder E/D, the latent noise predictor eps_theta(kappa_t, t, y), and the
module that holds both.

``eps_theta`` (:class:`LatentEpsNet`) is a UNet over the latent ``kappa_t``:

* the conditions ``y`` (every input contrast encoded by E, zero when absent, plus the structural
  guidance maps averaged down to the latent grid) go through auto-weight adaptation ``W`` (eqs. 7-10),
  then (a) are concatenated to ``kappa_t`` at the input (``concat_conditions``) and (b) are encoded
  into condition tokens at every attention level, which transformer blocks attend to (Fig. 1 D);
* which inputs are present is a 0/1 vector embedded and added to the timestep embedding;
* down path: residual blocks (:class:`~.blocks.BottleneckResBlock`), transformer blocks at the
  attention levels, 5x5/7x7 convolutions fused by AFF, then the level's feature is the skip;
* every skip passes through similar cooperative filtering (eq. 4) before it joins the up path;
* the output has ``2 x latent_channels`` channels with a learned variance: the noise estimate and the
  learned-range interpolation ``v`` (Nichol & Dhariwal 2021).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrsynth_cli.families.cola_diff.auto_weight import AutoWeight
from mrsynth_cli.families.cola_diff.blocks import (
    BottleneckResBlock,
    Downsample,
    LargeKernelFusion,
    PlainResBlock,
    TransformerBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_module,
)
from mrsynth_cli.families.cola_diff.config import AutoencoderConfig, CoLaDiffConfig
from mrsynth_cli.families.cola_diff.filtering import SimilarCooperativeFilter

__all__ = ["build_autoencoder", "LatentEpsNet", "CoLaDiffModel"]


def build_autoencoder(config: AutoencoderConfig) -> nn.Module:
    """MONAI ``AutoencoderKL`` (Rombach et al. 2022's KL-regularised autoencoder) for one-channel slices."""
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(
        spatial_dims=config.spatial_dims,
        in_channels=1,
        out_channels=1,
        num_res_blocks=config.num_res_blocks,
        channels=config.channels,
        attention_levels=config.attention_levels,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        with_encoder_nonlocal_attn=config.nonlocal_attention,
        with_decoder_nonlocal_attn=config.nonlocal_attention,
        use_flash_attention=config.nonlocal_attention or any(config.attention_levels),
    )


class LatentEpsNet(nn.Module):
    """eps_theta(kappa_t, t, y) with the switches of :class:`~.config.CoLaDiffConfig`."""

    def __init__(self, config: CoLaDiffConfig) -> None:
        super().__init__()
        self.config = config
        latent = config.latent_channels
        cond = config.condition_channels
        channels = config.channels
        emb = 4 * channels[0]
        Block = BottleneckResBlock if config.block == "bottleneck" else PlainResBlock
        self.auto_weight = AutoWeight(cond) if config.auto_weight else nn.Identity()
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.presence = nn.Linear(len(config.inputs), emb)
        self.conv_in = nn.Conv2d(latent + (cond if config.concat_conditions else 0), channels[0], 3, padding=1)
        levels = len(channels)
        attend = [2**level in config.attention_downsample for level in range(levels)]
        self.attend = attend
        ctx = config.context_channels
        self.context_in = nn.Sequential(
            nn.Conv2d(cond, ctx, 3, padding=1), nn.SiLU(), nn.Conv2d(ctx, ctx, 3, padding=1)
        )
        self.context_down = nn.ModuleList(nn.Conv2d(ctx, ctx, 3, stride=2, padding=1) for _ in range(levels - 1))

        def transformer(ch: int) -> TransformerBlock:
            return TransformerBlock(ch, ctx, config.heads, config.transformer_depth)

        def res(cin: int, cout: int) -> nn.Module:
            return Block(cin, cout, emb, config.bottleneck_ratio, config.dropout)

        self.down = nn.ModuleList()
        previous = channels[0]
        for level, ch in enumerate(channels):
            stage = nn.ModuleDict(
                {
                    "res": nn.ModuleList(res(previous if i == 0 else ch, ch) for i in range(config.num_res_blocks)),
                    "attn": nn.ModuleList(transformer(ch) for _ in range(config.num_res_blocks) if attend[level]),
                    "fusion": LargeKernelFusion(ch) if config.large_kernel_fusion else nn.Identity(),
                    "filter": SimilarCooperativeFilter(
                        ch,
                        config.wavelet,
                        config.wavelet_levels,
                        config.block_size,
                        config.block_stride,
                        config.group_size,
                    )
                    if config.filtering
                    else nn.Identity(),
                    "downsample": Downsample(ch, ch) if level + 1 < levels else nn.Identity(),
                }
            )
            self.down.append(stage)
            previous = ch
        deepest = channels[-1]
        self.mid = nn.ModuleList([res(deepest, deepest), transformer(deepest), res(deepest, deepest)])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            ch = channels[level]
            self.up.append(
                nn.ModuleDict(
                    {
                        "upsample": Upsample(channels[level + 1], ch) if level + 1 < levels else nn.Identity(),
                        "res": nn.ModuleList(res(2 * ch if i == 0 else ch, ch) for i in range(config.num_res_blocks)),
                        "attn": nn.ModuleList(transformer(ch) for _ in range(config.num_res_blocks) if attend[level]),
                    }
                )
            )
        out_channels = latent * (2 if config.learned_variance else 1)
        self.out = nn.Sequential(
            group_norm(channels[0]), nn.SiLU(), zero_module(nn.Conv2d(channels[0], out_channels, 3, padding=1))
        )

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, presence: Tensor) -> Tensor:
        """Predict the noise (and the variance interpolation ``v``) of ``x`` (B, latent, h, w) at timesteps ``t``.

        Args:
            x: the noisy latent ``kappa_t``.
            t: timesteps (B,), integer or fractional.
            cond: the encoded conditions ``y`` (B, condition_channels, h, w), before ``W``.
            presence: (B, number of inputs) 1 where an input is available.
        """
        channels = self.config.channels
        emb = self.time_mlp(timestep_embedding(t, channels[0])) + self.presence(presence.to(x.dtype))
        y = self.auto_weight(cond)
        contexts = [self.context_in(y)]
        for down in self.context_down:
            contexts.append(down(contexts[-1]))
        h = self.conv_in(torch.cat([x, y], dim=1) if self.config.concat_conditions else x)
        skips = []
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage["res"]):
                h = block(h, emb)
                if self.attend[level]:
                    h = stage["attn"][i](h, contexts[level])
            h = stage["fusion"](h)
            skips.append(stage["filter"](h))
            h = stage["downsample"](h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h, contexts[-1])
        h = self.mid[2](h, emb)
        for stage, level in zip(self.up, reversed(range(len(channels))), strict=True):
            skip = skips[level]
            if level + 1 < len(channels):
                h = stage["upsample"](h, skip.shape[-2:])
            h = torch.cat([h, skip], dim=1)
            for i, block in enumerate(stage["res"]):
                h = block(h, emb)
                if self.attend[level]:
                    h = stage["attn"][i](h, contexts[level])
        return self.out(h)


class CoLaDiffModel(nn.Module):
    """The frozen autoencoder, the noise predictor and the latent scale, saved as one state dict.

    ``latent_scale`` (a buffer) is Rombach et al.'s scale factor: 1 / std of the training latents, so
    that ``kappa_0`` has unit variance like the noise. Calling the module calls the noise predictor.
    """

    def __init__(self, config: CoLaDiffConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = build_autoencoder(config.autoencoder)
        for p in self.autoencoder.parameters():
            p.requires_grad_(False)
        self.eps = LatentEpsNet(config)
        self.register_buffer("latent_scale", torch.ones(()))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, presence: Tensor) -> Tensor:
        return self.eps(x, t, cond, presence)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Posterior means of E for (B, 1, H, W) slices, unscaled (B, latent, H/f, W/f)."""
        self.autoencoder.eval()
        z_mu, _ = self.autoencoder.encode(images)
        return z_mu

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """D of unscaled latents -> (B, 1, H, W) slices."""
        self.autoencoder.eval()
        return self.autoencoder.decode(latents)
