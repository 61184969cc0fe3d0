"""Building blocks of CoLa-Diff's latent noise-prediction network (Jiang et al. 2023, Sec. 2.1, Fig. 1).

* :class:`BottleneckResBlock`: "three sequential convolutions with kernels 1x1, 3x3, 1x1 and
  residual joins" (He et al. 2016's bottleneck), with the timestep embedding added after the first
  convolution. :class:`PlainResBlock` is the usual two-3x3 diffusion block (the ablation "w/o modified
  latent diffusion network").
* :class:`LargeKernelFusion`: 5x5 and 7x7 convolutions fused by attentional feature fusion
  (:class:`AFF`, Dai et al. 2021, "Attentional Feature Fusion", WACV: ``Z = M(X + Y) X + (1 - M(X + Y)) Y``
  with the multi-scale channel attention :class:`MSCAM`), used in the down path to enlarge the
  receptive field.
* :class:`TransformerBlock`: Fig. 1 (D): global self-attention, cross-attention to the condition
  tokens (how the conditions are "mapped in"), position-wise MLP, each after a layer norm and with a
  residual join (Rombach et al. 2022's spatial transformer).

Normalisation is GroupNorm throughout (AFF's paper uses BatchNorm; batch statistics are a poor fit
for diffusion training, whose batches mix noise levels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "group_norm",
    "timestep_embedding",
    "BottleneckResBlock",
    "PlainResBlock",
    "MSCAM",
    "AFF",
    "LargeKernelFusion",
    "TransformerBlock",
    "Downsample",
    "Upsample",
]


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` (B,) -> (B, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class BottleneckResBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions with a residual join; the timestep embedding enters after the 1x1.

    Args:
        in_channels, out_channels: feature channels in and out.
        emb_channels: size of the timestep (+ presence) embedding.
        ratio: bottleneck width = ``out_channels // ratio``.
        dropout: dropout before the last convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, ratio: int = 2, dropout: float = 0.0):
        super().__init__()
        mid = max(1, out_channels // ratio)
        self.reduce = nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, mid, 1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, mid))
        self.spatial = nn.Sequential(group_norm(mid), nn.SiLU(), nn.Conv2d(mid, mid, 3, padding=1))
        self.expand = nn.Sequential(
            group_norm(mid), nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(mid, out_channels, 1))
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.reduce(x) + self.emb(emb)[:, :, None, None]
        h = self.expand(self.spatial(h))
        return self.skip(x) + h


class PlainResBlock(nn.Module):
    """Two 3x3 convolutions with a residual join (Ho et al. 2020): the unmodified network of the ablation."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, ratio: int = 2, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.conv2 = nn.Sequential(
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(h)


class MSCAM(nn.Module):
    """Multi-scale channel attention (Dai et al. 2021): ``sigmoid(L(X) + g(X))``.

    ``L`` is a point-wise bottleneck (1x1 conv, norm, ReLU, 1x1 conv, norm) on every pixel, ``g`` the
    same on the globally average-pooled features (broadcast back), ``r`` the reduction ratio.
    """

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        mid = max(1, channels // ratio)
        self.local = nn.Sequential(
            nn.Conv2d(channels, mid, 1), group_norm(mid), nn.ReLU(), nn.Conv2d(mid, channels, 1), group_norm(channels)
        )
        self.glob = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, mid, 1), nn.ReLU(), nn.Conv2d(mid, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.local(x) + self.glob(x))


class AFF(nn.Module):
    """Attentional feature fusion: ``M(X + Y) * X + (1 - M(X + Y)) * Y``."""

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.attention = MSCAM(channels, ratio)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        weight = self.attention(x + y)
        return weight * x + (1.0 - weight) * y


class LargeKernelFusion(nn.Module):
    """5x5 and 7x7 convolutions of the same features, fused by :class:`AFF`, added back (zero-initialised)."""

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.conv5 = nn.Conv2d(channels, channels, 5, padding=2)
        self.conv7 = nn.Conv2d(channels, channels, 7, padding=3)
        self.fuse = AFF(channels, ratio)
        self.out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.norm(x))
        return x + self.out(self.fuse(self.conv5(h), self.conv7(h)))


class _Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(context_dim, dim, bias=False)
        self.v = nn.Linear(context_dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)

        h = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(context)), split(self.v(context)))
        return self.out(h.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Fig. 1 (D): self-attention, cross-attention to condition tokens, MLP; layer norms, residual joins.

    Works on ``(B, C, H, W)`` features; the context is ``(B, C_ctx, H', W')`` condition features,
    flattened to tokens (``None``: the cross-attention is skipped).

    Args:
        channels: feature channels.
        context_channels: condition feature channels.
        heads: attention heads.
        depth: how many (self-attn, cross-attn, MLP) layers.
    """

    def __init__(self, channels: int, context_channels: int, heads: int = 4, depth: int = 1) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.LayerNorm(channels),
                        "self_attn": _Attention(channels, channels, heads),
                        "norm2": nn.LayerNorm(channels),
                        "cross_attn": _Attention(channels, context_channels, heads),
                        "norm3": nn.LayerNorm(channels),
                        "mlp": nn.Sequential(
                            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
                        ),
                    }
                )
            )
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        ctx = context.flatten(2).transpose(1, 2) if context is not None else None
        for layer in self.layers:
            normed = layer["norm1"](tokens)
            tokens = tokens + layer["self_attn"](normed, normed)
            if ctx is not None:
                tokens = tokens + layer["cross_attn"](layer["norm2"](tokens), ctx)
            tokens = tokens + layer["mlp"](layer["norm3"](tokens))
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (odd sizes round up)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size, then a 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
