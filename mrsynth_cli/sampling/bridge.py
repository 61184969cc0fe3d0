"""Brownian-bridge diffusion (Li et al. 2023, "BBDM", CVPR; as used by MMDM, MICCAI 2025, eqs. 1-3).

Forward process, from the target x_0 to the source image y (MMDM eq. 1):

    x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps,    delta_t = 2 s (m_t - m_t^2),  eps ~ N(0, I)

with ``s`` the maximum variance scale (``max_var``, 1 by default). The paper writes ``m_t = t/T``, which
makes delta vanish at both ends; the released BBDM code, whose discretisation the MMDM checkpoints were
trained with, uses ``m_t = linspace(m_min, m_max, T)[t]`` for ``t = 0..T-1`` with ``m_min = 0.001``,
``m_max = 0.999``. That is what :class:`BridgeSchedule` implements (the two differ by at most 0.001).
Sampling starts at ``x = y`` at ``t = T-1`` and ends at the x_0 estimate (``m = delta = 0`` after the last
step).

Reverse step from ``t`` to an earlier ``s`` (derived here from eq. 1, not copied). Write ``r_u = x_u - (1 - m_u)
x_0 - m_u y`` for the noise part at time u. The bridge is Markov with
``x_t | x_s ~ N((1-m_t)x_0 + m_t y + a r_s, delta_{t|s})``, ``a = (1 - m_t)/(1 - m_s)``,
``delta_{t|s} = delta_t - a^2 delta_s``. ``(r_s, r_t)`` are jointly Gaussian with ``Var r_s = delta_s``,
``Var r_t = delta_t``, ``Cov = a delta_s``, so the posterior (MMDM eq. 2) is

    q(x_s | x_t, x_0, y) = N((1 - m_s) x_0 + m_s y + (a delta_s / delta_t) r_t,  sigma~^2),
    sigma~^2 = delta_s delta_{t|s} / delta_t.

With ``eps_hat = r_t / sqrt(delta_t)`` this is ``x_s = (1 - m_s) x_0 + m_s y + sqrt(delta_s - sigma^2)
eps_hat + sigma z`` at ``sigma = sigma~`` (since ``delta_s - sigma~^2 = a^2 delta_s^2 / delta_t``). The
sampler uses that form with ``sigma = eta * sigma~``: ``eta = 1`` is the Markov posterior (ancestral
sampling, BBDM's default), ``eta = 0`` is deterministic (DDIM-like). ``x_0`` is the model's estimate and
``z`` is **Gaussian** noise from :func:`~mrsynth_cli.sampling.base.draw_noise` (the MMDM copy of BBDM used
uniform ``rand_like`` noise: a known bug).

Objectives (what the network predicts; BBDM's names plus ``"x0"``):

* ``"grad"``: ``m_t (y - x_0) + sqrt(delta_t) eps`` (= ``x_t - x_0``; MMDM eq. 3), so ``x_0 = x_t - out``;
* ``"noise"``: ``eps``, so ``x_0 = (x_t - m_t y - sqrt(delta_t) out) / (1 - m_t)``;
* ``"ysubx"``: ``y - x_0`` (the MMDM code's objective), so ``x_0 = y - out``;
* ``"x0"``: ``x_0`` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
from mrsynth_cli.sampling.schedule import RESPACINGS

__all__ = ["BRIDGE_OBJECTIVES", "BridgeSchedule", "BrownianBridgeSampler"]

BRIDGE_OBJECTIVES = ("grad", "noise", "ysubx", "x0")


@dataclass(frozen=True)
class BridgeSchedule:
    """The Brownian-bridge schedule ``m_t`` and ``delta_t`` (float64), with the forward process and objectives.

    Args:
        num_train_timesteps: T (t = 0..T-1).
        m_min: ``m_0``, in ``[0, m_max)``.
        m_max: ``m_{T-1}``, in ``(m_min, 1)``.
        max_var: s, the variance scale: ``delta_t = 2 s (m_t - m_t^2)`` (peaks at ``s/2``).

    Attributes:
        m_t: float64 tensor [T].
        variance_t: float64 tensor [T], ``delta_t``.

    Raises:
        SamplerConfigError: out-of-range values.
    """

    num_train_timesteps: int = 1000
    m_min: float = 0.001
    m_max: float = 0.999
    max_var: float = 1.0
    m_t: Tensor = field(init=False, repr=False, compare=False)
    variance_t: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        T = self.num_train_timesteps
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise SamplerConfigError(f"num_train_timesteps must be an int >= 2, got {T!r}", "e.g. 1000")
        if not 0.0 <= self.m_min < self.m_max < 1.0:
            raise SamplerConfigError(
                f"bridge needs 0 <= m_min < m_max < 1, got m_min={self.m_min}, m_max={self.m_max}",
                "BBDM uses m_min=0.001, m_max=0.999",
            )
        if not self.max_var > 0:
            raise SamplerConfigError(f"max_var must be > 0, got {self.max_var}", "BBDM uses max_var=1.0")
        m_t = torch.linspace(self.m_min, self.m_max, T, dtype=torch.float64)
        object.__setattr__(self, "m_t", m_t)
        object.__setattr__(self, "variance_t", 2.0 * self.max_var * (m_t - m_t**2))

    def m(self, t: int) -> float:
        """``m_t`` at integer timestep ``t``; ``t = -1`` (the clean end, after the last step) gives 0."""
        return 0.0 if t == -1 else float(self.m_t[t])

    def delta(self, t: int) -> float:
        """``delta_t`` at integer timestep ``t``; ``t = -1`` gives 0."""
        return 0.0 if t == -1 else float(self.variance_t[t])

    def _coef(self, values: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
        c = values[torch.as_tensor(t, dtype=torch.long).cpu()]
        if c.ndim == 1:
            c = c.reshape(-1, *([1] * (like.ndim - 1)))
        return c.to(like)

    def q_sample(self, x0: Tensor, y: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """``x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps`` (MMDM eq. 1); ``t`` an int or Tensor[batch]."""
        m = self._coef(self.m_t, t, x0)
        sd = self._coef(self.variance_t.sqrt(), t, x0)
        return (1 - m) * x0 + m * y + sd * noise

    def objective_target(self, x0: Tensor, y: Tensor, noise: Tensor, t: int | Tensor, objective: str) -> Tensor:
        """What a network with ``objective`` should output for ``q_sample(x0, y, t, noise)``."""
        check_choice("objective", objective, BRIDGE_OBJECTIVES)
        if objective == "grad":
            m = self._coef(self.m_t, t, x0)
            return m * (y - x0) + self._coef(self.variance_t.sqrt(), t, x0) * noise
        if objective == "noise":
            return noise
        if objective == "ysubx":
            return y - x0
        return x0

    def predict_x0(self, model_output: Tensor, x_t: Tensor, y: Tensor, t: int | Tensor, objective: str) -> Tensor:
        """The x_0 estimate implied by a model output (inverts :meth:`objective_target`)."""
        check_choice("objective", objective, BRIDGE_OBJECTIVES)
        if objective == "grad":
            return x_t - model_output
        if objective == "noise":
            m = self._coef(self.m_t, t, x_t)
            sd = self._coef(self.variance_t.sqrt(), t, x_t)
            return (x_t - m * y - sd * model_output) / (1 - m)
        if objective == "ysubx":
            return y - model_output
        return model_output


class BrownianBridgeSampler(BaseSampler):
    """Reverse Brownian-bridge sampling from the source ``y`` (= ``x_T``) to the target.

    The loop calls :meth:`start` with ``x_T``, which *is* the source image ``y`` of the bridge; the
    sampler keeps it, since every step needs ``y``.

    Args:
        schedule: the bridge schedule the network was trained with.
        objective: ``"grad"``, ``"noise"``, ``"ysubx"`` or ``"x0"``.
        eta: scales the posterior standard deviation, in ``[0, 1]`` (1: BBDM's default; 0: deterministic).
        spacing: how timesteps are respaced (:func:`~mrsynth_cli.sampling.schedule.respace`).
        clip_range: clamp the x_0 estimate to ``(low, high)`` (e.g. ``(-1, 1)``); None: no clipping.
        num_inference_steps: if given, :meth:`set_timesteps` is called with it.

    Raises:
        SamplerConfigError: an unknown name or an out-of-range value.
    """

    def __init__(
        self,
        schedule: BridgeSchedule,
        *,
        objective: str = "grad",
        eta: float = 1.0,
        spacing: str = "linear",
        clip_range: tuple[float, float] | None = None,
        num_inference_steps: int | None = None,
    ) -> None:
        if not 0.0 <= float(eta) <= 1.0:
            raise SamplerConfigError(f"eta must be in [0, 1], got {eta}", "1 samples the posterior, 0 is deterministic")
        self._setup(schedule, BridgeSchedule, spacing=spacing, spacings=RESPACINGS, clip_range=clip_range)
        self.objective = check_choice("objective", objective, BRIDGE_OBJECTIVES)
        self.eta = float(eta)
        self._source: Tensor | None = None
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose ``num_inference_steps`` timesteps with ``spacing`` ("linear" visits both T-1 and 0)."""
        self._respaced_timesteps(num_inference_steps)

    def start(self, x_T: Tensor) -> None:
        """Keep the source image ``y``: the bridge starts at ``x_T = y``."""
        self._source = x_T

    def step(
        self, model_output: Tensor, t_index: int, sample: Tensor, *, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Draw ``x_s ~ N((1-m_s) x0 + m_s y + sqrt(delta_s - sigma^2) eps_hat, sigma^2)`` for ``t -> s``."""
        self._check_index(t_index)
        y = self._source
        if y is None:
            raise SamplerConfigError("the bridge sampler has no source image", "call start(x_T) with y first")
        if y.shape != sample.shape:
            raise SamplerConfigError(
                f"source shape {tuple(y.shape)} differs from sample shape {tuple(sample.shape)}",
                "start the loop from x_T = y",
            )
        steps = self.timesteps
        t = steps[t_index]
        s = steps[t_index + 1] if t_index + 1 < len(steps) else -1
        m_t, d_t = self.schedule.m(t), self.schedule.delta(t)
        m_s, d_s = self.schedule.m(s), self.schedule.delta(s)

        pred_x0 = clip_x0(self.schedule.predict_x0(model_output, sample, y, t, self.objective), self.clip_range)
        if d_t > 0:
            eps_hat = (sample - (1 - m_t) * pred_x0 - m_t * y) / math.sqrt(d_t)
            a = (1 - m_t) / (1 - m_s)
            sigma2 = self.eta**2 * d_s * (d_t - a * a * d_s) / d_t
        else:  # delta_t = 0 (m_min = 0 at t = 0): x_t carries no noise
            eps_hat = torch.zeros_like(sample)
            sigma2 = 0.0
        sigma2 = max(sigma2, 0.0)
        prev = (1 - m_s) * pred_x0 + m_s * y + math.sqrt(max(d_s - sigma2, 0.0)) * eps_hat
        if sigma2 > 0:
            prev = prev + math.sqrt(sigma2) * draw_noise(sample.shape, generator, sample.device, sample.dtype)
        return StepOutput(prev_sample=prev, pred_x0=pred_x0)
