"""Sampling a progressively distilled student (Salimans & Ho 2022): deterministic DDIM steps with v on its own grid.

A student of :mod:`mrsynth_cli.distill` predicts ``v = alpha eps - sigma x_0`` and was trained for
exactly one time grid (``grid``, the timesteps in its
:class:`~mrsynth_cli.distill.record.DistillationRecord`): N steps are N network evaluations. Each step,
from ``t`` to the next grid timestep ``s`` (x_0 after the last), is

    x_hat = alpha_t z - sigma_t v_hat,   eps_hat = sigma_t z + alpha_t v_hat,
    z_s   = alpha_s x_hat + sigma_s eps_hat          (DDIM, eta = 0)

with ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``. There is no noise to add, so no generator is used
after the initial ``z_T``. Students read their first timestep, the schedule's last (``T - 1``), as SNR 0
(``abar = 0``: ``x_hat = -v_hat``, ``eps_hat = z``), as they were trained (:mod:`mrsynth_cli.distill.objective`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mrsynth_cli.sampling.base import BaseSampler, SamplerConfigError, StepOutput, clip_x0
from mrsynth_cli.sampling.ddim import ddim_update
from mrsynth_cli.sampling.schedule import NoiseSchedule, eps_from_output, x0_from_output

__all__ = ["DistilledSampler"]


class DistilledSampler(BaseSampler):
    """Deterministic v-prediction DDIM over a distilled student's fixed grid.

    Args:
        schedule: the teacher's (and student's) noise schedule.
        grid: the student's timesteps, strictly descending, within ``[0, T-1]``.
        clip_range: clamp the x_0 estimate to ``(low, high)``; None: no clipping.
        num_inference_steps: if given, must equal ``len(grid)`` (a student has exactly one step count).

    Raises:
        SamplerConfigError: a grid that is not strictly descending inside the schedule, or another step count.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        grid: Sequence[int],
        clip_range: tuple[float, float] | None = None,
        num_inference_steps: int | None = None,
    ) -> None:
        self._setup(schedule, NoiseSchedule, spacing="trailing", spacings=("trailing",), clip_range=clip_range)
        grid = [int(t) for t in grid]
        T = schedule.num_train_timesteps
        if not grid or grid != sorted(set(grid), reverse=True) or grid[0] > T - 1 or grid[-1] < 0:
            raise SamplerConfigError(f"bad student grid {grid}", f"strictly descending timesteps in [0, {T - 1}]")
        self.grid = grid
        self.set_timesteps(num_inference_steps or len(grid))

    def set_timesteps(self, num_inference_steps: int) -> None:
        """A student samples in exactly ``len(grid)`` steps."""
        if num_inference_steps != len(self.grid):
            raise SamplerConfigError(
                f"this distilled student samples in exactly {len(self.grid)} steps, not {num_inference_steps}",
                f"drop --steps or give --steps {len(self.grid)} (or distil another student)",
            )
        self._set_timesteps_list(self.grid)

    def step(
        self, model_output: Tensor, t_index: int, sample: Tensor, *, generator: torch.Generator | None = None
    ) -> StepOutput:
        """Move ``sample`` from ``grid[t_index]`` to the next grid timestep (x_0 after the last)."""
        t, t_next = self._step_pair(t_index)
        a_t = 0.0 if t == self.schedule.num_train_timesteps - 1 else float(self.schedule.alpha_bar(t))
        a_next = float(self.schedule.alpha_bar(t_next))
        pred_x0 = clip_x0(x0_from_output(model_output, sample, a_t, "v_prediction"), self.clip_range)
        if self.clip_range is None:
            pred_eps = eps_from_output(model_output, sample, a_t, "v_prediction")
        else:
            pred_eps = eps_from_output(pred_x0, sample, a_t, "sample")
        return StepOutput(prev_sample=ddim_update(sample, pred_x0, pred_eps, a_t, a_next, 0.0, None), pred_x0=pred_x0)
