"""MMDM's losses: the cumulative MIP loss with the Gumbel-softmax relaxation (eqs. 5-7) and the
noise-adaptive weighting strategy NAWS (eqs. 8-11).

Every loss is returned **per sample** (shape ``[B]``), because NAWS weights each sample by its own
bridge variance ``delta_t`` (the third-party copy used the first sample's ``t`` for the whole batch).

The slice axis of a 2.5D window ``(B, N, H, W)`` is dim 1 (the paper's "channel dimension").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "cumulative_mip",
    "gumbel_cumulative_mip",
    "mip_loss",
    "hybrid_loss",
    "NoiseAdaptiveWeighting",
]


def cumulative_mip(x: Tensor) -> Tensor:
    """Eq. 5: ``x_MIP[i] = max(x[0:i+1])`` along dim 1 (hard, for the ground truth)."""
    return torch.cummax(x, dim=1).values


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``R = -ln(-ln(u + 1e-20) + 1e-20)``, ``u ~ U(0, 1)`` (eq. 6), drawn from the passed generator."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device if generator else "cpu")
    return (-torch.log(-torch.log(u + 1e-20) + 1e-20)).to(device)


def gumbel_cumulative_mip(
    x: Tensor, temperature: float, generator: torch.Generator | None, gumbel_scale: float = 1.0
) -> Tensor:
    """Eq. 6: a differentiable cumulative MIP along dim 1.

    ``x_MIP[i] = sum_{j<=i} softmax_j((x[j] + s R[j]) / tau) x[j]``, the softmax taken over the first
    ``i + 1`` slices of every voxel. With ``s = 1`` (the paper) and tau -> 0 it picks the slice of the
    largest *perturbed* value ``x + R`` (a Gumbel-max draw around the maximum); with ``s = 0`` it tends to
    the hard maximum of eq. 5.

    Args:
        x: ``(B, N, ...)`` prediction.
        temperature: tau > 0.
        generator: draws ``u`` (may be None only when ``gumbel_scale == 0``).
        gumbel_scale: ``s``.
    """
    logits = x
    if gumbel_scale:
        logits = x + gumbel_scale * gumbel_noise(x.shape, generator, x.device).to(x.dtype)
    n = x.shape[1]
    upto = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # [i, j]: j <= i
    shape = (1, n, n) + (1,) * (x.ndim - 2)
    expanded = (logits / temperature).unsqueeze(1).expand(x.shape[0], n, *x.shape[1:])  # (B, i, j, ...)
    masked = expanded.masked_fill(~upto.reshape(shape), float("-inf"))
    weights = masked.softmax(dim=2)
    return (weights * x.unsqueeze(1)).sum(dim=2)


def _per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def mip_loss(
    pred: Tensor, target: Tensor, temperature: float, generator: torch.Generator | None, gumbel_scale: float = 1.0
) -> Tensor:
    """``L_MIP = MSE(x^_MIP, x_MIP) + MSE(x^r_MIP, x^r_MIP)``: forward and reversed slice order, per sample."""
    forward = _per_sample_mse(gumbel_cumulative_mip(pred, temperature, generator, gumbel_scale), cumulative_mip(target))
    reverse = _per_sample_mse(
        gumbel_cumulative_mip(pred.flip(1), temperature, generator, gumbel_scale), cumulative_mip(target.flip(1))
    )
    return forward + reverse


def hybrid_loss(
    pred: Tensor,
    target: Tensor,
    *,
    use_mip: bool,
    temperature: float,
    generator: torch.Generator | None,
    gumbel_scale: float = 1.0,
) -> Tensor:
    """Eq. 7: ``L_hyb = L_MIP + MSE`` per sample (MSE only when ``use_mip`` is off)."""
    loss = _per_sample_mse(pred, target)
    if use_mip:
        loss = loss + mip_loss(pred, target, temperature, generator, gumbel_scale)
    return loss


class NoiseAdaptiveWeighting(nn.Module):
    """NAWS (eqs. 8-11): learnable sigma_0 (fusion) and sigma_m (paths) weigh the losses.

    ``L = L_0 / (2 sigma_0^2) + sum_m L_m / (2 (sigma_m^2 + delta_t)) + C``,
    ``C = log(1 + sigma_0^2) + sum_m log(1 + sigma_m^2 + delta_t)``, with ``delta_t`` each sample's own
    bridge variance and the total averaged over the batch. The sigmas start at 1; ``1e-6`` is added to
    sigma_0^2 so that the fusion weight stays finite.

    Args:
        paths: number of modality paths.
        fused: whether there is a cooperative (fusion) loss term with its own sigma_0.
    """

    def __init__(self, paths: int, fused: bool) -> None:
        super().__init__()
        self.sigma_paths = nn.Parameter(torch.ones(paths))
        self.sigma_fused = nn.Parameter(torch.ones(())) if fused else None

    def forward(
        self, fused_loss: Tensor | None, path_losses: Tensor, delta: Tensor, *, adaptive: bool = True
    ) -> Tensor:
        """The total loss.

        Args:
            fused_loss: ``[B]`` hybrid loss of the cooperative prediction (None without fusion).
            path_losses: ``[B, P]`` hybrid losses of the independent predictions.
            delta: ``[B]`` each sample's ``delta_t``.
            adaptive: False gives the plain sum of the losses (the paper's ablation baseline).
        """
        if not adaptive:
            total = path_losses.sum(1) + (fused_loss if fused_loss is not None else 0.0)
            return total.mean()
        variance = self.sigma_paths.pow(2)[None, :] + delta.to(path_losses)[:, None]  # [B, P]
        total = (path_losses / (2 * variance)).sum(1) + torch.log1p(variance).sum(1)
        if fused_loss is not None and self.sigma_fused is not None:
            var0 = self.sigma_fused.pow(2) + 1e-6
            total = total + fused_loss / (2 * var0) + torch.log1p(var0)
        return total.mean()
