"""Ancestral DDPM sampling (Ho, Jain & Abbeel 2020, eqs. 6-7), correct for any respacing.

For a step from ``t`` to an arbitrary earlier ``t_prev`` (``-1`` after the last step) the respaced chain
has ``beta = 1 - abar_t / abar_prev`` (Nichol & Dhariwal 2021, Sec. 4, "respacing"), and the posterior
``q(x_prev | x_t, x_0)`` has

    mean     = sqrt(abar_prev) beta / (1 - abar_t) x_0 + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t
    variance = beta (1 - abar_prev) / (1 - abar_t)    ("fixed_small", the posterior variance)
               beta                                   ("fixed_large", Ho et al.'s sigma^2 = beta)

Both use ``abar_t`` and ``abar_prev`` of the visited timesteps: MONAI's ``DDPMScheduler.step`` uses
``abar_{t-1}`` instead, which is wrong for fewer than T steps. No noise is added on the last step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mrsynth_cli.sampling.base import (
    BaseSampler,
    StepOutput,
    check_choice,
    clip_x0,
    draw_noise,
)
from mrsynth_cli.sampling.schedule import PREDICTION_TYPES, RESPACINGS, NoiseSchedule, x0_from_output

__all__ = ["VARIANCE_TYPES", "DDPMSampler"]

VARIANCE_TYPES = ("fixed_small", "fixed_large")


class DDPMSampler(BaseSampler):
    """Ancestral sampling from the posterior of a (possibly respaced) DDPM chain.

    Args:
        schedule: the noise schedule the network was trained with.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        variance_type: ``"fixed_small"`` (posterior variance) or ``"fixed_large"`` (beta).
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
        variance_type: str = "fixed_small",
        spacing: str = "linear",
        clip_range: tuple[float, float] | None = None,
        num_inference_steps: int | None = None,
    ) -> None:
        self._setup(schedule, NoiseSchedule, spacing=spacing, spacings=RESPACINGS, clip_range=clip_range)
        self.prediction_type = check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.variance_type = check_choice("variance_type", variance_type, VARIANCE_TYPES)
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose ``num_inference_steps`` timesteps of the schedule with ``spacing`` (T steps: every timestep)."""
        self._respaced_timesteps(num_inference_steps)

    def step(
        self, model_output: Tensor, t_index: int, sample: Tensor, *, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Draw ``x_prev ~ q(x_prev | x_t, pred_x0)`` for the step ``timesteps[t_index] -> next``."""
        t, t_prev = self._step_pair(t_index)
        a_t = float(self.schedule.alpha_bar(t))
        a_prev = float(self.schedule.alpha_bar(t_prev))
        beta = 1.0 - a_t / a_prev  # the respaced beta
        pred_x0 = clip_x0(x0_from_output(model_output, sample, a_t, self.prediction_type), self.clip_range)

        coef_x0 = math.sqrt(a_prev) * beta / (1.0 - a_t)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
        prev = coef_x0 * pred_x0 + coef_xt * sample
        if t_prev >= 0:  # no noise on the step to x_0
            variance = beta * (1.0 - a_prev) / (1.0 - a_t) if self.variance_type == "fixed_small" else beta
            prev = prev + math.sqrt(variance) * draw_noise(sample.shape, generator, sample.device, sample.dtype)
        return StepOutput(prev_sample=prev, pred_x0=pred_x0)
