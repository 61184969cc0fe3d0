"""The progressive-distillation objective (Salimans & Ho 2022, Algorithm 2) on a discrete schedule.

Notation: variance preserving, ``z_t = alpha_t x + sigma_t eps`` with ``alpha_t = sqrt(abar_t)``,
``sigma_t = sqrt(1 - abar_t)`` from the teacher's discrete schedule (timesteps 0..T-1; ``t = -1`` is the
clean end, ``abar = 1``).

**Time grids.** A student with N steps visits ``respace(T, N, "trailing")``: ``s_k = round(T (N - k) / N) - 1``
for ``k = 0..N-1`` (``s_0 = T - 1``, the noisiest training timestep), then x_0. These grids nest exactly:
the 2N-step grid's even entries are the N-step grid, so its odd entries are the midpoints the teacher
visits. (The paper samples continuous time and uses ``alpha_1 = 0`` at the start; a discrete-time
teacher has no such timestep, and ``abar_{T-1}`` = 4e-5 for the linear 1e-4..0.02 schedule is close.)

**Target.** From ``z_t`` at ``t = s_k`` the teacher takes two DDIM (eta = 0) steps, to the midpoint
``t'`` and on to ``t'' = s_{k+1}`` (-1 after the last step):
``z_{t'} = alpha_{t'} x_hat + sigma_{t'} eps_hat`` with ``(x_hat, eps_hat)`` the teacher's estimates at
``(z_t, t)``, and likewise to ``z_{t''}``. The student's target ``x~`` is the x_0 that makes ONE DDIM step
from ``z_t`` land on ``z_{t''}``: ``z_{t''} = alpha_{t''} x~ + (sigma_{t''}/sigma_t)(z_t - alpha_t x~)``, so

    x~ = (z_{t''} - (sigma_{t''}/sigma_t) z_t) / (alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t).

**Parameterisations.** The original CoLa-Diff teacher predicts eps; its estimates are read with
``x_hat = (z - sigma eps_hat)/alpha`` (:func:`~mrsynth_cli.sampling.schedule.x0_from_output`). Students
predict ``v = alpha eps - sigma x`` with the SAME output head (the first C output channels of the
network, which the teacher used for eps): ``x_hat = alpha z - sigma v_hat`` and ``eps_hat = sigma z +
alpha v_hat``. A student starts from its teacher's weights, so in the first round its head still
outputs (roughly) eps and the round also teaches it to output v; from round 2 on teacher and student
share the v parameterisation. v is used because it stays well conditioned at ``alpha -> 0``, where an
eps head's ``x_hat`` divides by alpha (the paper's Sec. 4).

**The first step reads SNR 0.** The paper's continuous schedule starts at ``alpha = 0`` exactly; a
discrete teacher's noisiest timestep still has ``abar_{T-1}`` = 4e-5 (alpha = 0.006). Solving for ``x~`` at
that alpha divides by ``alpha_{t''} - (sigma_{t''}/sigma_t) alpha_t`` (0.003 for a 32-step student), which
blows any teacher error up 300-fold. Students therefore read their first grid timestep (``T - 1``) as
SNR 0 (``alpha = 0, sigma = 1``; Lin et al. 2024's zero terminal SNR, only for the student's reading):
there ``x_hat = -v_hat`` and the target is ``x~ = (z_{t''} - sigma_{t''} z_t) / alpha_{t''}``. The
training inputs ``z_t`` are still drawn with the real ``abar_{T-1}`` (the teacher's training
distribution), and the sampler (:class:`~mrsynth_cli.sampling.distilled.DistilledSampler`) reads the
first step the same way, so student training and sampling agree exactly.

**Clipping the teacher's x estimate.** An eps teacher's ``x_hat = (z - sigma eps_hat)/alpha`` at
alpha = 0.006 multiplies its eps error by 160; as DDIM implementations clip x_0 to the data range
(guided-diffusion's ``clip_denoised``), the teacher's ``x_hat`` is clamped to ``[-x0_bound, x0_bound]``
(the task's bound: for CoLa-Diff the largest |value| of the scaled training latents), with
``eps_hat`` recomputed from the clamped ``x_hat``. ``x0_bound = None`` turns it off.

**Weighting.** The loss is ``w(t) ||x_hat - x~||^2`` with ``w = max(SNR_t, 1)`` ("truncated SNR", Algorithm 2)
or ``w = 1 + SNR_t`` ("SNR+1", equal to the v-space loss ``||v_hat - v~||^2``); ``SNR_t = alpha_t^2 / sigma_t^2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mrsynth_cli.errors import InputError
from mrsynth_cli.sampling.schedule import NoiseSchedule, eps_from_output, respace, x0_from_output

__all__ = ["RoundPlan", "plan_rounds", "student_grid", "teacher_target", "distillation_loss", "draw_round_batch"]


def student_grid(num_train_timesteps: int, steps: int) -> list[int]:
    """The N-step student's timesteps (descending; x_0 after the last)."""
    return respace(num_train_timesteps, steps, "trailing")


@dataclass(frozen=True)
class RoundPlan:
    """One round: a ``teacher_steps`` teacher (DDIM on its grid) distilled into a ``student_steps`` student."""

    teacher_steps: int
    student_steps: int
    teacher_grid: tuple[int, ...]
    student_grid: tuple[int, ...]


def plan_rounds(num_train_timesteps: int, from_steps: int, to_steps: int) -> list[RoundPlan]:
    """Halve from ``from_steps`` to ``to_steps``: ``from_steps = to_steps * 2**k`` with ``k >= 1``.

    Raises:
        InputError: the step counts are not such a pair, or exceed the schedule.
    """
    if to_steps < 1 or from_steps <= to_steps or from_steps % to_steps or (from_steps // to_steps) & (
        from_steps // to_steps - 1
    ):
        raise InputError(
            f"cannot halve {from_steps} steps down to {to_steps}",
            "use --from-steps equal to --to-steps times a power of two (e.g. 64 and 4)",
        )
    if from_steps > num_train_timesteps:
        raise InputError(f"--from-steps {from_steps} exceeds the {num_train_timesteps} training timesteps", "use fewer")
    plans, n = [], from_steps
    while n > to_steps:
        plans.append(RoundPlan(n, n // 2, tuple(student_grid(num_train_timesteps, n)),
                               tuple(student_grid(num_train_timesteps, n // 2))))
        n //= 2
    for plan in plans:  # the nesting the objective relies on
        assert plan.teacher_grid[::2] == plan.student_grid
    return plans


def _roots(schedule: NoiseSchedule, t: Tensor, like: Tensor, zero_first: bool = False) -> tuple[Tensor, Tensor]:
    """``alpha_t`` and ``sigma_t`` (float64, then ``like``'s dtype) for per-sample timesteps (``-1`` = clean).

    ``zero_first``: read ``t = T - 1`` as SNR 0 (how students read their first step; module docstring).
    """
    t = t.detach().cpu()
    abar = schedule.alpha_bar(t)
    if zero_first:
        abar = torch.where(t == schedule.num_train_timesteps - 1, torch.zeros_like(abar), abar)
    abar = abar.reshape(-1, *([1] * (like.ndim - 1)))
    return abar.sqrt().to(like), (1.0 - abar).sqrt().to(like)


def draw_round_batch(plan: RoundPlan, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: the student's timestep ``t = s_k`` (k uniform), the teacher's midpoint ``t'``, ``t'' = s_{k+1}``."""
    k = torch.randint(0, plan.student_steps, (batch,), generator=generator)
    teacher = torch.tensor(list(plan.teacher_grid) + [-1])
    student = torch.tensor(list(plan.student_grid) + [-1])
    return student[k], teacher[2 * k + 1], student[k + 1]


@torch.no_grad()
def teacher_target(
    predict: Callable[[Tensor, Tensor], Tensor],
    prediction_type: str,
    schedule: NoiseSchedule,
    z_t: Tensor,
    path: list[Tensor],
    end: Tensor,
    *,
    teacher_zero_first: bool = False,
    x0_bound: float | None = None,
) -> Tensor:
    """``x~``: the x_0 for which one student DDIM step from ``z_t`` equals the teacher's DDIM steps along ``path``.

    Args:
        predict: the teacher, ``(z, t) -> its prediction`` (conditions in the closure).
        prediction_type: the teacher's parameterisation (``epsilon``, ``sample`` or ``v_prediction``).
        schedule: the discrete schedule.
        z_t: the noisy samples at ``path[0]``.
        path: the timesteps (each Tensor[B]) the teacher evaluates, starting with the student's ``t``
            (two entries for a halving round).
        end: the timestep (Tensor[B]) both land on; ``-1`` is x_0.
        teacher_zero_first: the teacher is itself a student (it reads ``T - 1`` as SNR 0).
        x0_bound: clamp the teacher's x estimates to ``[-x0_bound, x0_bound]`` (None: no clamp).
    """
    z = z_t
    for i, t in enumerate(path):
        nxt = path[i + 1] if i + 1 < len(path) else end
        out = predict(z, t).to(z.dtype)
        alpha, sigma = _roots(schedule, t, z, teacher_zero_first)
        abar = alpha**2
        x_hat = x0_from_output(out, z, abar, prediction_type)
        if x0_bound is None:
            eps_hat = eps_from_output(out, z, abar, prediction_type)
        else:  # keep eps consistent with the clamped x (as DDIMSampler with a clip_range)
            x_hat = x_hat.clamp(-x0_bound, x0_bound)
            eps_hat = (z - alpha * x_hat) / sigma
        alpha_next, sigma_next = _roots(schedule, nxt, z)
        z = alpha_next * x_hat + sigma_next * eps_hat
    alpha, sigma = _roots(schedule, path[0], z_t, zero_first=True)
    alpha_end, sigma_end = _roots(schedule, end, z_t)
    ratio = sigma_end / sigma
    return (z - ratio * z_t) / (alpha_end - ratio * alpha)


def distillation_loss(
    v_hat: Tensor, z_t: Tensor, t: Tensor, x_target: Tensor, schedule: NoiseSchedule, weighting: str
) -> Tensor:
    """Per-sample ``w(t) mean((x_hat - x~)^2)`` with ``x_hat = alpha z_t - sigma v_hat`` (see the module docstring)."""
    alpha, sigma = _roots(schedule, t, z_t, zero_first=True)
    x_hat = alpha * z_t - sigma * v_hat.to(z_t.dtype)
    snr = alpha**2 / sigma**2
    weight = snr.clamp(min=1.0) if weighting == "truncated-snr" else 1.0 + snr
    return (weight * (x_hat - x_target) ** 2).flatten(1).mean(1)
