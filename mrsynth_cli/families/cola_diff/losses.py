"""CoLa-Diff's training loss L_MCL = L_eps + L_KL (Jiang et al. 2023, eqs. 3, 5, 6).

Timesteps are 0-based as in :mod:`mrsynth_cli.sampling.schedule`: ``kappa_t = sqrt(abar_t) kappa_0 +
sqrt(1 - abar_t) eps`` for ``t = 0..T-1``, with ``abar_{-1} = 1``.

* ``L_eps = || eps - eps_theta(kappa_t, t, y) ||^2`` (eq. 3), averaged over latent elements.
* ``L_KL``: ``D_KL(q(kappa_{t-1} | kappa_t, kappa_0) || p_theta(kappa_{t-1} | kappa_t))`` (eq. 6). The KL needs a
  reverse variance, so the network also outputs ``v`` and (Nichol & Dhariwal 2021, "Improved
  DDPM", eq. 15) ``log Sigma_theta = f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2``
  ("learned range"); ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` is the posterior variance.
  The mean of ``p_theta`` is the posterior mean at the x_0 implied by a *detached* ``eps_theta``, so
  the KL trains the variance only and ``L_eps`` trains the mean (improved DDPM's stop-gradient).

**Weighting.** Eq. 6 sums the KL over every timestep. With one uniformly drawn ``t`` per sample the
sum is estimated by ``T * D_KL(t)``; improved DDPM's ``L_hybrid = L_simple + lambda L_vlb`` uses
``lambda = 1/T`` (0.001 for T = 1000), which makes the per-sample term exactly ``D_KL(t)``. That is what
is implemented (``kl_weight = 1``), in bits per latent element as improved DDPM and the guided-diffusion
code the paper's repository builds on; the paper states no weight, and a weight of 1 on the full sum
would swamp ``L_eps`` by three orders of magnitude. The ``t = 0`` term of the variational bound is a
decoder likelihood, not a KL, and eq. 6 leaves it out: samples with ``t = 0`` contribute ``L_eps`` only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mrsynth_cli.sampling.schedule import NoiseSchedule

__all__ = ["normal_kl", "posterior", "learned_range_log_variance", "diffusion_loss"]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Element-wise ``KL(N(mean1, exp logvar1) || N(mean2, exp logvar2))`` in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` (float64 schedule constants) shaped to broadcast over ``like``."""
    picked = values[t.detach().long().cpu()]
    return picked.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def _constants(schedule: NoiseSchedule) -> dict[str, Tensor]:
    """float64 per-timestep constants of the posterior ``q(kappa_{t-1} | kappa_t, kappa_0)``."""
    betas = schedule.betas
    abar = schedule.alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    variance = betas * (1.0 - abar_prev) / (1.0 - abar)  # beta~_t (0 at t = 0)
    return {
        "coef_x0": betas * abar_prev.sqrt() / (1.0 - abar),
        "coef_xt": (1.0 - betas).sqrt() * (1.0 - abar_prev) / (1.0 - abar),
        "variance": variance,
        # log beta~ with the t = 0 value (log 0) replaced by t = 1's, as improved DDPM does.
        "log_variance_clipped": torch.log(torch.cat([variance[1:2], variance[1:]])),
        "log_beta": betas.log(),
    }


def posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and clipped log-variance of ``q(kappa_{t-1} | kappa_t, kappa_0)`` (Ho et al. 2020, eq. 7)."""
    c = _constants(schedule)
    mean = _per_sample(c["coef_x0"], t, x0) * x0 + _per_sample(c["coef_xt"], t, x0) * x_t
    return mean, _per_sample(c["log_variance_clipped"], t, x0).expand_as(x0)


def learned_range_log_variance(schedule: NoiseSchedule, v: Tensor, t: Tensor) -> Tensor:
    """``f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2`` (improved DDPM, eq. 15)."""
    c = _constants(schedule)
    frac = (v + 1.0) / 2.0
    return frac * _per_sample(c["log_beta"], t, v) + (1.0 - frac) * _per_sample(c["log_variance_clipped"], t, v)


def diffusion_loss(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    noise: Tensor,
    t: Tensor,
    *,
    learned_variance: bool = True,
    kl_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_eps + kl_weight * L_KL`` averaged over the batch; also returns both terms (detached).

    Args:
        schedule: the training noise schedule.
        model_output: (B, 2C, ...) noise and ``v`` with a learned variance, else (B, C, ...) noise.
        x0, x_t, noise: the clean latent, the noisy one and the noise that made it.
        t: (B,) integer timesteps.
        learned_variance: whether ``model_output`` carries ``v`` (and the KL term is used).
        kl_weight: weight of the KL term (see the module docstring).
    """
    channels = x0.shape[1]
    model_output = model_output.to(x0.dtype)  # the KL in full precision even after a mixed-precision forward
    eps = model_output[:, :channels]
    l_eps = (eps - noise).pow(2).flatten(1).mean(1)
    if not learned_variance:
        return l_eps.mean(), {"eps": l_eps.mean().detach()}
    v = model_output[:, channels:]
    abar = _per_sample(schedule.alphas_cumprod, t, x0)
    x0_pred = (x_t - (1.0 - abar).sqrt() * eps.detach()) / abar.sqrt()
    true_mean, true_log_var = posterior(schedule, x0, x_t, t)
    model_mean, _ = posterior(schedule, x0_pred, x_t, t)
    model_log_var = learned_range_log_variance(schedule, v, t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / math.log(2.0)
    kl = torch.where(t.to(kl.device) > 0, kl, torch.zeros_like(kl))
    loss = (l_eps + kl_weight * kl).mean()
    return loss, {"eps": l_eps.mean().detach(), "kl": kl.mean().detach()}
