"""MRDiff's training objective: L_G (eq. 3), L_D (eqs. 4/8) and the self-content consistency L_CCT (eqs. 9-11).

Every term is a mean over elements (as an MSE), so the paper's weights 1, 1, 0.01 balance terms of
comparable size. The N perturbed copies share the sample's ``t`` and draw independent noise (the
paper's "consistent level of noise"); L_G and L_D average over all copies. Eq. 10 as printed: the
global content ``e_bar`` is not detached and the features are not normalised (the released code
does both); the gradient then pulls every copy towards the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mrsynth_cli.families.mrdiff.config import MRDiffConfig
from mrsynth_cli.sampling import NoiseSchedule

__all__ = ["consistency_loss", "mrdiff_loss"]


def consistency_loss(features: Tensor) -> Tensor:
    """Eqs. 9-10 for ``features`` (N, B, ...): the mean over copies and elements of ``(e_i - mean_i e_i)^2``."""
    global_content = features.mean(dim=0, keepdim=True)
    return (features - global_content).pow(2).mean()


def mrdiff_loss(
    network: torch.nn.Module,
    config: MRDiffConfig,
    schedule: NoiseSchedule,
    x0: Tensor,
    y: Tensor,
    acquisition: Tensor,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 11 for a batch.

    Args:
        network: an :class:`~mrsynth_cli.families.mrdiff.network.MRDiffNetwork` (or its DDP wrapper).
        config: its config (lambdas, N, switches).
        schedule: the forward process (eq. 2).
        x0: targets (B, 1, H, W) in [-1, 1]; y: clean conditions (B, K, H, W); acquisition: (B, K, 3).
        generator: the source of t and of the noise.

    Returns:
        The total loss and its parts (floats, for logging).
    """
    n, b = config.copies, x0.shape[0]
    device = x0.device
    t = torch.randint(0, config.num_train_timesteps, (b,), generator=generator).repeat(n)
    noise = torch.randn((n * b, *x0.shape[1:]), generator=generator).to(device)
    x0_all = x0.repeat(n, 1, 1, 1)
    y_all = y.repeat(n, 1, 1, 1)
    x_t = schedule.q_sample(x0_all, t.to(device), noise)
    x0_hat, y_hat, e_t = network(x_t, y_all, t.to(device), acquisition.repeat(n, 1, 1))
    loss_g = F.mse_loss(x0_hat.float(), x0_all)
    loss_d = F.mse_loss(y_hat.float(), y_all)
    total = config.lambda_g * loss_g + config.lambda_d * loss_d
    parts = {"L_G": float(loss_g.detach()), "L_D": float(loss_d.detach())}
    if config.consistency:
        loss_cct = consistency_loss(e_t.float().reshape(n, b, *e_t.shape[1:]))
        total = total + config.lambda_cct * loss_cct
        parts["L_CCT"] = float(loss_cct.detach())
    return total, parts
