"""Kong & Ping 2021, "On Fast Sampling of Diffusion Probabilistic Models" (FastDPM): training-free fast sampling.

A network trained on T timesteps is sampled in S << T steps, with one of two ways of picking the
S noise levels:

* **STEP**: a subsequence ``tau_1 < .. < tau_S`` of the training timesteps, ``"linear"`` or
  ``"quadratic"`` (:func:`~mrsynth_cli.sampling.schedule.respace`); the noise levels are
  ``abar_{tau_s}``.
* **VAR**: a new S-step variance schedule ``beta_hat_1..S`` (``"linear"``: linspace(beta_1, x, S);
  ``"quadratic"``: linspace(sqrt beta_1, sqrt x, S)^2), with ``x`` found by bisection so that
  ``prod_s (1 - beta_hat_s) = abar_{T-1}`` (the chain starts at the training schedule's noise level);
  ``gamma_bar_s = prod_{i <= s}(1 - beta_hat_i)``. Each ``gamma_bar_s`` is mapped to the
  continuous timestep ``t_s`` with ``abar(t_s) = gamma_bar_s``. The paper derives that map in closed
  form for linear betas (a log-Gamma approximation of the product); we invert a piecewise-linear
  interpolation of ``log abar`` between integer timesteps instead
  (:meth:`~mrsynth_cli.sampling.schedule.NoiseSchedule.timestep_for_alpha_bar`), which is exact at
  integer steps and works for any beta schedule.

**The network is then called with a fractional timestep** ``t_s`` (a float32 tensor): our networks take
float timesteps, as the paper requires (their sinusoidal embeddings are continuous in t; MONAI's
``get_timestep_embedding`` casts ``timesteps.float()``). A family whose network only takes integer
timesteps must use ``kind="step"``.

The reverse step is the paper's kappa-family, the generalised update
``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
``sigma = kappa * sqrt((1 - abar_prev)/(1 - abar_t) (1 - abar_t/abar_prev))``:
``kappa = 1`` is the paper's DDPM-rev (ancestral sampling of the shortened chain), ``kappa = 0`` its
DDIM-rev (deterministic). This is :func:`~mrsynth_cli.sampling.ddim.ddim_update` with ``eta = kappa``.
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
    check_clip_range,
    check_num_steps,
    clip_x0,
)
from mrsynth_cli.sampling.ddim import ddim_update
from mrsynth_cli.sampling.schedule import PREDICTION_TYPES, NoiseSchedule, eps_from_output, respace, x0_from_output

__all__ = ["FAST_KINDS", "FAST_SPACINGS", "FastSampler", "var_betas"]

FAST_KINDS = ("step", "var")
FAST_SPACINGS = ("linear", "quadratic")


def var_betas(schedule: NoiseSchedule, num_steps: int, spacing: str = "linear") -> Tensor:
    """Kong & Ping's VAR schedule: S betas (float64) whose ``prod(1 - beta_hat)`` equals ``abar_{T-1}``.

    Args:
        schedule: the training schedule; its first beta starts the new schedule.
        num_steps: S, in ``[2, T]``.
        spacing: ``"linear"`` or ``"quadratic"`` (linear in sqrt(beta)).

    Raises:
        SamplerConfigError: unknown spacing, S out of range, or no schedule of this shape matches.
    """
    check_choice("spacing", spacing, FAST_SPACINGS)
    S = check_num_steps(num_steps, schedule.num_train_timesteps)
    if S < 2:
        raise SamplerConfigError("the VAR schedule needs at least 2 steps", "use kind='step' for a single step")
    beta_first = float(schedule.betas[0])
    target = float(schedule.alphas_cumprod[-1].log())

    def betas_to(last: float) -> Tensor:
        if spacing == "linear":
            return torch.linspace(beta_first, last, S, dtype=torch.float64)
        return torch.linspace(math.sqrt(beta_first), math.sqrt(last), S, dtype=torch.float64) ** 2

    def log_prod(last: float) -> float:
        return float(torch.log1p(-betas_to(last)).sum())

    low, high = beta_first, 1.0  # log_prod decreases in `last`, from S log(1 - beta_first) down to -inf at 1
    if log_prod(low) < target:
        raise SamplerConfigError(
            f"no {spacing} VAR schedule of {S} steps reaches abar_T (even constant betas overshoot)",
            "use fewer steps or kind='step'",
        )
    for _ in range(200):  # bisection to float64 precision
        mid = 0.5 * (low + high)
        if log_prod(mid) > target:
            low = mid
        else:
            high = mid
    return betas_to(low)


class FastSampler(BaseSampler):
    """Kong & Ping's FastDPM sampler (STEP or VAR noise levels, ``kappa`` between DDIM-rev and DDPM-rev).

    Args:
        schedule: the noise schedule the network was trained with.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        kind: ``"step"`` (a subsequence of integer timesteps) or ``"var"`` (a new variance schedule at
            fractional timesteps).
        spacing: ``"linear"`` or ``"quadratic"``, for either kind.
        kappa: the noise scale in ``[0, 1]``: 0 is DDIM-rev (deterministic), 1 is DDPM-rev.
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
        kind: str = "step",
        spacing: str = "linear",
        kappa: float = 0.0,
        clip_range: tuple[float, float] | None = None,
        num_inference_steps: int | None = None,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise SamplerConfigError(
                f"the fast sampler needs a NoiseSchedule, got {type(schedule).__name__}",
                "build one with NoiseSchedule(...)",
            )
        if not 0.0 <= float(kappa) <= 1.0:
            raise SamplerConfigError(f"kappa must be in [0, 1], got {kappa}", "0 is DDIM-rev, 1 is DDPM-rev")
        self.schedule = schedule
        self.prediction_type = check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.kind = check_choice("kind", kind, FAST_KINDS)
        self.spacing = check_choice("spacing", spacing, FAST_SPACINGS)
        self.kappa = float(kappa)
        self.clip_range = check_clip_range(clip_range)
        self._alpha_bars: list[float] = []
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)

    @property
    def alpha_bars(self) -> list[float]:
        """The noise level ``abar`` at each of :attr:`timesteps` (descending timesteps, ascending abar)."""
        self.timesteps  # noqa: B018 - raises if set_timesteps was not called
        return list(self._alpha_bars)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the S noise levels (STEP: integer timesteps; VAR: fractional timesteps)."""
        T = self.schedule.num_train_timesteps
        if self.kind == "step":
            steps: list = respace(T, num_inference_steps, self.spacing)
            alpha_bars = [float(self.schedule.alpha_bar(t)) for t in steps]
        else:
            gamma_bar = torch.cumprod(1.0 - var_betas(self.schedule, num_inference_steps, self.spacing), dim=0)
            gamma_bar[-1] = self.schedule.alphas_cumprod[-1]  # equal up to bisection precision; make it exact
            t_cont = self.schedule.timestep_for_alpha_bar(gamma_bar).tolist()
            steps = [float(round(t)) if abs(t - round(t)) < 1e-6 else t for t in reversed(t_cont)]
            alpha_bars = list(reversed(gamma_bar.tolist()))
        self._alpha_bars = alpha_bars
        self._set_timesteps_list(steps)

    def step(
        self, model_output: Tensor, t_index: int, sample: Tensor, *, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Move ``sample`` from noise level ``alpha_bars[t_index]`` to the next (or to x_0 after the last)."""
        self._check_index(t_index)
        a_t = self._alpha_bars[t_index]
        a_prev = self._alpha_bars[t_index + 1] if t_index + 1 < len(self._alpha_bars) else 1.0
        pred_x0 = clip_x0(x0_from_output(model_output, sample, a_t, self.prediction_type), self.clip_range)
        if self.clip_range is None:
            pred_eps = eps_from_output(model_output, sample, a_t, self.prediction_type)
        else:  # keep eps consistent with the clipped x_0
            pred_eps = eps_from_output(pred_x0, sample, a_t, "sample")
        prev = ddim_update(sample, pred_x0, pred_eps, a_t, a_prev, self.kappa, generator)
        return StepOutput(prev_sample=prev, pred_x0=pred_x0)
