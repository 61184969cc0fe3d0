"""The Gaussian noise schedule (betas, alphas_cumprod), parameterisation conversions and timestep respacing.

Notation follows Ho et al. 2020 ("Denoising Diffusion Probabilistic Models"): timesteps ``t = 0 .. T-1``
(0-based, as MONAI and diffusers), ``alphas_cumprod[t] = prod_{i <= t} (1 - betas[i])`` (written
``abar_t``), and the forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Schedule constants
are float64; they are cast to the sample's dtype only when they multiply a tensor.

Parameterisations (MONAI's vocabulary): ``"epsilon"`` (the model predicts eps), ``"sample"`` (it predicts
x_0) and ``"v_prediction"`` (Salimans & Ho 2022, "Progressive Distillation", Sec. 4:
``v = sqrt(abar) eps - sqrt(1 - abar) x_0``, so ``x_0 = sqrt(abar) x_t - sqrt(1 - abar) v`` and
``eps = sqrt(1 - abar) x_t + sqrt(abar) v``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mrsynth_cli.sampling.base import SamplerConfigError, check_choice, check_num_steps

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTION_TYPES",
    "RESPACINGS",
    "NoiseSchedule",
    "eps_from_output",
    "respace",
    "x0_from_output",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
RESPACINGS = ("linear", "quadratic", "trailing")

AlphaBar = float | Tensor


# ---------------------------------------------------------------------------------------------------
# Conversions between what the model predicts, x_0 and eps, at a given abar
# ---------------------------------------------------------------------------------------------------


def _roots(alpha_bar: AlphaBar, like: Tensor) -> tuple[float | Tensor, float | Tensor]:
    """``sqrt(abar)`` and ``sqrt(1 - abar)``, computed in float64 and cast to ``like``'s dtype/device."""
    if isinstance(alpha_bar, Tensor):
        a = alpha_bar.to(torch.float64)
        return a.sqrt().to(like), (1.0 - a).sqrt().to(like)
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def x0_from_output(model_output: Tensor, x_t: Tensor, alpha_bar: AlphaBar, prediction_type: str) -> Tensor:
    """The x_0 estimate implied by a model output (Ho et al. 2020 eq. 4; Salimans & Ho 2022 Sec. 4).

    Args:
        model_output: the network output at ``x_t``.
        x_t: the noisy sample.
        alpha_bar: ``abar_t``, a float or a tensor that broadcasts against ``x_t``.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    sa, s1a = _roots(alpha_bar, x_t)
    if prediction_type == "epsilon":
        return (x_t - s1a * model_output) / sa
    if prediction_type == "sample":
        return model_output
    return sa * x_t - s1a * model_output


def eps_from_output(model_output: Tensor, x_t: Tensor, alpha_bar: AlphaBar, prediction_type: str) -> Tensor:
    """The noise estimate implied by a model output (see :func:`x0_from_output`)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    sa, s1a = _roots(alpha_bar, x_t)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (x_t - sa * model_output) / s1a
    return s1a * x_t + sa * model_output


# ---------------------------------------------------------------------------------------------------
# Respacing: which of the T training timesteps a short sampler visits
# ---------------------------------------------------------------------------------------------------


def respace(num_train_timesteps: int, num_steps: int, kind: str = "linear") -> list[int]:
    """The descending list of ``num_steps`` distinct training timesteps a respaced sampler visits.

    * ``"linear"``: ``tau_i = floor(i (T-1) / (S-1))``, i = 0..S-1, so both ``T-1`` and ``0`` are visited
      (Kong & Ping 2021, STEP schedule, linear).
    * ``"quadratic"``: ``tau_i = floor((i sqrt(0.8 T) / (S-1))^2)`` (Song et al. 2021, DDIM code; Kong & Ping
      2021, STEP, quadratic). The chain starts at ``0.8 T``; needs ``S >= 2`` and fails if steps repeat.
    * ``"trailing"``: ``round(T - i T / S) - 1`` (Lin et al. 2024, "Common diffusion noise schedules and
      sample steps are flawed"): starts at ``T-1``, ends at ``T/S - 1``.

    Args:
        num_train_timesteps: T.
        num_steps: S, in ``[1, T]``.
        kind: ``"linear"``, ``"quadratic"`` or ``"trailing"``.

    Returns:
        ``S`` distinct ints in ``[0, T-1]``, largest first.

    Raises:
        SamplerConfigError: unknown ``kind``, ``S`` out of range, or a spacing that repeats a timestep.
    """
    check_choice("respacing", kind, RESPACINGS)
    T = num_train_timesteps
    S = check_num_steps(num_steps, T)
    if kind == "linear":
        steps = [T - 1] if S == 1 else [(i * (T - 1)) // (S - 1) for i in range(S)]
    elif kind == "quadratic":
        if S < 2:
            raise SamplerConfigError("quadratic respacing needs at least 2 steps", "use 'linear' for a single step")
        steps = [int(v + 1e-9) for v in np.linspace(0.0, math.sqrt(0.8 * T), S) ** 2]
    else:  # trailing; integer arithmetic for round-half-up of T (S - i) / S
        steps = [(2 * T * (S - i) + S) // (2 * S) - 1 for i in range(S)]
    steps = sorted(steps, reverse=True)
    if len(set(steps)) != len(steps):
        raise SamplerConfigError(
            f"{kind} respacing of {S} steps out of T={T} repeats timesteps",
            "use fewer steps or the 'linear' respacing",
        )
    return steps


# ---------------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------------


def _make_betas(kind: str, T: int, beta_start: float, beta_end: float, cosine_s: float) -> Tensor:
    if kind == "linear":  # Ho et al. 2020
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if kind == "scaled_linear":  # Rombach et al. 2022 (LDM's "linear"): linspace in sqrt(beta)
        return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
    # cosine: Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    # beta_t = 1 - abar(t+1)/abar(t), clipped at 0.999 to avoid the singularity at t = T.
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


@dataclass(frozen=True)
class NoiseSchedule:
    """A DDPM variance schedule with its float64 constants and the parameterisation helpers.

    Args:
        num_train_timesteps: T, the number of training timesteps (t = 0..T-1).
        beta_schedule: ``"linear"`` (linspace(beta_start, beta_end)), ``"scaled_linear"``
            (linspace(sqrt beta_start, sqrt beta_end)^2, LDM; e.g. 0.0015..0.0195 for ALDM) or ``"cosine"``
            (Nichol & Dhariwal 2021, s = ``cosine_s``, beta clipped at 0.999; ignores beta_start/beta_end).
        beta_start: the first beta of the linear schedules.
        beta_end: the last beta of the linear schedules.
        cosine_s: the cosine schedule's offset s.

    Attributes:
        betas: float64 tensor [T].
        alphas_cumprod: float64 tensor [T], ``abar_t``.

    Raises:
        SamplerConfigError: unknown schedule name or betas outside (0, 1).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    betas: Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: Tensor = field(init=False, repr=False, compare=False)
    _abar_grid: Tensor = field(init=False, repr=False, compare=False)
    _log_abar_grid: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        T = self.num_train_timesteps
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise SamplerConfigError(f"num_train_timesteps must be an int >= 2, got {T!r}", "e.g. 1000")
        if self.beta_schedule != "cosine" and not 0 < self.beta_start <= self.beta_end < 1:
            raise SamplerConfigError(
                f"betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}",
                "e.g. beta_start=1e-4, beta_end=0.02",
            )
        betas = _make_betas(self.beta_schedule, T, self.beta_start, self.beta_end, self.cosine_s)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise SamplerConfigError(f"{self.beta_schedule} schedule gives betas outside (0, 1)", "check cosine_s")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        # log(abar) at t = -1, 0, .., T-1 (abar_{-1} = 1): the grid for continuous timesteps.
        grid = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod])
        object.__setattr__(self, "_abar_grid", grid)
        object.__setattr__(self, "_log_abar_grid", grid.log())

    # -- abar at integer or continuous timesteps ------------------------------------------------------

    def alpha_bar(self, t: int | Tensor) -> Tensor:
        """``abar_t`` (float64) at integer timestep(s) ``t``; ``t = -1`` gives 1 (the clean end)."""
        t = torch.as_tensor(t, dtype=torch.long)
        if bool(((t < -1) | (t >= self.num_train_timesteps)).any()):
            raise SamplerConfigError(
                f"timestep outside [-1, {self.num_train_timesteps - 1}]", "timesteps index the training schedule"
            )
        return self._abar_grid[(t + 1).cpu()]

    def alpha_bar_at(self, t: float | Tensor) -> Tensor:
        """``abar`` at continuous timestep(s) ``t`` in ``[-1, T-1]`` (float64).

        ``log abar`` is interpolated linearly between the integer timesteps (exact at integers), with
        ``abar_{-1} = 1``. This is how a fractional timestep (Kong & Ping 2021's VAR schedule) is read.
        """
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        T = self.num_train_timesteps
        if bool(((t < -1 - 1e-9) | (t > T - 1 + 1e-9)).any()):
            raise SamplerConfigError(f"continuous timestep outside [-1, {T - 1}]", "timesteps index the schedule")
        pos = (t + 1).clamp(0, T)
        lo = pos.floor().long().clamp(max=T - 1)
        frac = pos - lo
        grid = self._log_abar_grid
        return (grid[lo] * (1 - frac) + grid[lo + 1] * frac).exp()

    def timestep_for_alpha_bar(self, alpha_bar: float | Tensor) -> Tensor:
        """The continuous timestep(s) whose :meth:`alpha_bar_at` equals ``alpha_bar`` (the inverse map; float64).

        Raises:
            SamplerConfigError: ``alpha_bar`` outside ``[alphas_cumprod[-1], 1]``.
        """
        log_a = torch.as_tensor(alpha_bar, dtype=torch.float64).cpu().log()
        neg = -self._log_abar_grid  # increasing: 0 at t = -1 up to -log abar_{T-1}
        x = -log_a
        if bool(((x < -1e-12) | (x > neg[-1] * (1 + 1e-9))).any()):
            raise SamplerConfigError(
                f"alpha_bar outside [{float(self.alphas_cumprod[-1]):.3g}, 1]", "the schedule cannot reach it"
            )
        x = x.clamp(0, float(neg[-1]))
        j = torch.searchsorted(neg, x).clamp(1, self.num_train_timesteps)
        frac = (x - neg[j - 1]) / (neg[j] - neg[j - 1])
        return (j - 1).to(torch.float64) + frac - 1

    def _alpha_bar_like(self, t: int | float | Tensor, like: Tensor) -> Tensor:
        """abar at per-batch timesteps ``t`` (ints index, floats interpolate), shaped to broadcast over ``like``."""
        is_float = isinstance(t, float) or (isinstance(t, Tensor) and t.is_floating_point())
        a = self.alpha_bar_at(t) if is_float else self.alpha_bar(t)
        if a.ndim == 1:
            a = a.reshape(-1, *([1] * (like.ndim - 1)))
        return a.to(like.device)

    # -- forward process and parameterisations --------------------------------------------------------

    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020 eq. 4); ``t``: int or Tensor[batch]."""
        sa, s1a = _roots(self._alpha_bar_like(t, x0), x0)
        return sa * x0 + s1a * noise

    def predict_x0(self, model_output: Tensor, x_t: Tensor, t: int | Tensor, prediction_type: str) -> Tensor:
        """The x_0 implied by ``model_output`` at timestep(s) ``t`` (see :func:`x0_from_output`)."""
        return x0_from_output(model_output, x_t, self._alpha_bar_like(t, x_t), prediction_type)

    def predict_eps(self, model_output: Tensor, x_t: Tensor, t: int | Tensor, prediction_type: str) -> Tensor:
        """The noise implied by ``model_output`` at timestep(s) ``t`` (see :func:`eps_from_output`)."""
        return eps_from_output(model_output, x_t, self._alpha_bar_like(t, x_t), prediction_type)

    def v_target(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022, Sec. 4)."""
        sa, s1a = _roots(self._alpha_bar_like(t, x0), x0)
        return sa * noise - s1a * x0

    def training_target(self, x0: Tensor, noise: Tensor, t: int | Tensor, prediction_type: str) -> Tensor:
        """What a network with ``prediction_type`` should output for ``q_sample(x0, t, noise)``."""
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        return self.v_target(x0, noise, t)
