"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eqs. 12 and 16).

With ``eta = 0`` the update is deterministic (the only randomness is the initial noise); with
``eta = 1`` its variance is the posterior variance of the respaced DDPM, i.e. ancestral sampling.
The update itself is :func:`ddim_update`, which Kong & Ping's fast sampler (``fast.py``) reuses with
``eta = kappa``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mrsynth_cli.sampling.base import (
    BaseSampler,
    SamplerConfigError,
    StepOutput,
    check_choice,
    clip_x0,
    draw_noise,
)
from mrsynth_cli.sampling.schedule import (
    PREDICTION_TYPES,
    RESPACINGS,
    NoiseSchedule,
    eps_from_output,
    x0_from_output,
)

__all__ = ["DDIMSampler", "ddim_update"]


def ddim_update(
    sample: Tensor,
    pred_x0: Tensor,
    pred_eps: Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float,
    generator: torch.Generator | None,
) -> Tensor:
    """One generalised DDIM step from ``abar_t`` to ``abar_prev`` (Song et al. 2021, eq. 12).

    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)`` (eq. 16) and ``z`` from
    :func:`~mrsynth_cli.sampling.base.draw_noise` (drawn only when ``sigma > 0``).
    """
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))
    direction = math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0))
    prev = math.sqrt(alpha_bar_prev) * pred_x0 + direction * pred_eps
    if sigma > 0:
        prev = prev + sigma * draw_noise(sample.shape, generator, sample.device, sample.dtype)
    return prev


class DDIMSampler(BaseSampler):
    """DDIM over a respaced subset of the training timesteps.

    Args:
        schedule: the noise schedule the network was trained with.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        eta: the noise scale in ``[0, 1]``: 0 deterministic, 1 DDPM-like ancestral sampling.
        spacing: how timesteps are respaced (:func:`~mrsynth_cli.sampling.schedule.respace`).
        clip_range: clamp the x_0 estimate to ``(low, high)`` (e.g. ``(-1, 1)``); None: no clipping.
        num_inference_steps: if given, :meth:`set_timesteps` is called with it.

    Raises:
        SamplerConfigError: an unknown name or an out-of-range value.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        prediction_type: str = "epsilon",
        eta: float = 0.0,
        spacing: str = "linear",
        clip_range: tuple[float, float] | None = None,
        num_inference_steps: int | None = None,
    ) -> None:
        if not 0.0 <= float(eta) <= 1.0:
            raise SamplerConfigError(f"eta must be in [0, 1], got {eta}", "0 is deterministic DDIM, 1 is DDPM-like")
        self._setup(schedule, NoiseSchedule, spacing=spacing, spacings=RESPACINGS, clip_range=clip_range)
        self.prediction_type = check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.eta = float(eta)
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose ``num_inference_steps`` timesteps of the schedule with ``spacing``."""
        self._respaced_timesteps(num_inference_steps)

    def step(
        self, model_output: Tensor, t_index: int, sample: Tensor, *, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Move ``sample`` from ``timesteps[t_index]`` to the next timestep (or to x_0 after the last)."""
        t, t_prev = self._step_pair(t_index)
        a_t = float(self.schedule.alpha_bar(t))
        a_prev = float(self.schedule.alpha_bar(t_prev))
        pred_x0 = clip_x0(x0_from_output(model_output, sample, a_t, self.prediction_type), self.clip_range)
        if self.clip_range is None:
            pred_eps = eps_from_output(model_output, sample, a_t, self.prediction_type)
        else:  # keep eps consistent with the clipped x_0
            pred_eps = eps_from_output(pred_x0, sample, a_t, "sample")
        prev = ddim_update(sample, pred_x0, pred_eps, a_t, a_prev, self.eta, generator)
        return StepOutput(prev_sample=prev, pred_x0=pred_x0)
