"""The sampler contract, the step result, the one Gaussian-noise helper and choice validation.

Every sampler in this package (``ddpm.py``, ``ddim.py``, ``fast.py``, ``bridge.py``) follows
:class:`Sampler`: ``set_timesteps(n)`` picks the timesteps, ``start(x_T)`` sees the initial state once,
and ``step(model_output, t_index, sample, *, generator)`` moves one step down the chain. The denoising
loop (:func:`mrsynth_cli.sampling.loop.sample`) is written once against this contract, so samplers never
look at the model and the loop never looks at the sampler's algorithm.

All noise a sampler adds is drawn by :func:`draw_noise` (Gaussian, on the generator's own device), so
a ``rand_like``/``randn_like`` slip (the uniform noise of the MMDM copy of BBDM) cannot happen in one
sampler only, and the same seed gives the same numbers on CPU and GPU.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from mrsynth_cli.errors import MrsynthError

__all__ = [
    "BaseSampler",
    "Sampler",
    "SamplerConfigError",
    "StepOutput",
    "check_choice",
    "check_clip_range",
    "clip_x0",
    "check_num_steps",
    "draw_noise",
]


class SamplerConfigError(MrsynthError, ValueError):
    """A sampler or schedule was given an unknown name or an out-of-range value.

    It is both a :class:`~mrsynth_cli.errors.MrsynthError` (the CLI reports it in one line, exit code 2)
    and a :class:`ValueError` (for library callers), whose ``str()`` includes the hint.
    """

    def __str__(self) -> str:
        return self.one_line()


def check_choice(argument: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise with a did-you-mean suggestion.

    Args:
        argument: the argument's name, for the message.
        value: the name given.
        choices: the allowed names.

    Raises:
        SamplerConfigError: ``value`` is not in ``choices``.
    """
    if value in choices:
        return value
    lowered = {choice.lower(): choice for choice in choices}
    close = [lowered[str(value).lower()]] if str(value).lower() in lowered else []
    close = close or difflib.get_close_matches(str(value), list(choices), n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    raise SamplerConfigError(f"unknown {argument} '{value}'", f"{guess}choices: {', '.join(choices)}")


def check_num_steps(num_inference_steps: int, num_train_timesteps: int) -> int:
    """Validate a number of sampling steps: an int in ``[1, num_train_timesteps]``.

    Raises:
        SamplerConfigError: the number is not an int or is out of range.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int):
        raise SamplerConfigError(
            f"num_inference_steps must be an int, got {num_inference_steps!r}", "pass a whole number of steps"
        )
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise SamplerConfigError(
            f"num_inference_steps={num_inference_steps} is outside [1, {num_train_timesteps}]",
            f"use between 1 and num_train_timesteps={num_train_timesteps} steps",
        )
    return num_inference_steps


def draw_noise(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw standard Gaussian noise N(0, I): THE noise helper every sampler uses.

    The numbers are drawn in float32 on the generator's own device (a CPU generator draws on the CPU)
    and then moved to ``device`` and cast to ``dtype``, so a seed gives the same noise whatever device
    the model runs on (as diffusers' ``randn_tensor``).

    Args:
        shape: the shape of the noise tensor.
        generator: the random generator; required (randomness is always passed in, never global).
        device: where the result goes; default: the generator's device.
        dtype: the result's floating dtype.

    Returns:
        A tensor of independent N(0, 1) draws with ``shape``, on ``device``, of ``dtype``.

    Raises:
        SamplerConfigError: ``generator`` is None.
    """
    if generator is None:
        raise SamplerConfigError(
            "this sampler adds noise but no random generator was given",
            "pass generator=torch.Generator().manual_seed(seed)",
        )
    noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return noise.to(device=device if device is not None else generator.device, dtype=dtype)


@dataclass(frozen=True)
class StepOutput:
    """The result of one sampler step.

    Attributes:
        prev_sample: the state at the next (smaller) timestep, same shape and dtype as the input sample.
        pred_x0: the model's estimate of the clean image at this step (after any clipping).
    """

    prev_sample: Tensor
    pred_x0: Tensor


@runtime_checkable
class Sampler(Protocol):
    """The contract between samplers and the denoising loop.

    ``timesteps`` is descending; entry ``i`` is the timestep the model sees at loop step ``i``
    (ints, except for the fast sampler's VAR schedule, whose timesteps are fractional).
    """

    @property
    def timesteps(self) -> list[int] | list[float]: ...

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def start(self, x_T: Tensor) -> None: ...

    def step(
        self, model_output: Tensor, t_index: int, sample: Tensor, *, generator: torch.Generator | None
    ) -> StepOutput: ...


class BaseSampler:
    """Shared bookkeeping: the timestep list, index checks and a no-op :meth:`start`.

    Subclasses implement :meth:`set_timesteps` (which must call :meth:`_set_timesteps_list`) and
    :meth:`step`.
    """

    _timesteps: list | None = None

    @property
    def timesteps(self) -> list:
        """The descending timesteps the model is evaluated at (set by :meth:`set_timesteps`)."""
        if self._timesteps is None:
            raise SamplerConfigError(
                f"{type(self).__name__} has no timesteps yet", "call set_timesteps(num_inference_steps) first"
            )
        return list(self._timesteps)

    @property
    def num_inference_steps(self) -> int | None:
        """How many steps :meth:`set_timesteps` chose, or None before it was called."""
        return None if self._timesteps is None else len(self._timesteps)

    def _set_timesteps_list(self, timesteps: list) -> None:
        self._timesteps = list(timesteps)

    def _check_index(self, t_index: int) -> None:
        n = len(self.timesteps)
        if not 0 <= t_index < n:
            raise SamplerConfigError(f"t_index={t_index} is outside [0, {n - 1}]", "step through 0..len(timesteps)-1")

    def start(self, x_T: Tensor) -> None:
        """Called by the loop once, before the first step, with the initial state (Gaussian samplers ignore it)."""

    def _setup(
        self,
        schedule: object,
        schedule_type: type,
        *,
        spacing: str,
        spacings: Sequence[str],
        clip_range: tuple[float, float] | None,
    ) -> None:
        """Check and keep what every sampler has: its schedule, timestep spacing and x_0 clipping."""
        if not isinstance(schedule, schedule_type):
            raise SamplerConfigError(
                f"{type(self).__name__} needs a {schedule_type.__name__}, got {type(schedule).__name__}",
                f"build one with {schedule_type.__name__}(...)",
            )
        self.schedule = schedule
        self.spacing = check_choice("spacing", spacing, spacings)
        self.clip_range = check_clip_range(clip_range)

    def _respaced_timesteps(self, num_inference_steps: int) -> None:
        """Use ``num_inference_steps`` of the training timesteps, spaced by ``self.spacing``."""
        from mrsynth_cli.sampling.schedule import respace

        self._set_timesteps_list(respace(self.schedule.num_train_timesteps, num_inference_steps, self.spacing))

    def _step_pair(self, t_index: int) -> tuple[int, int]:
        """The timestep at ``t_index`` and the next one visited (-1 after the last: x_0)."""
        self._check_index(t_index)
        steps = self.timesteps
        return steps[t_index], (steps[t_index + 1] if t_index + 1 < len(steps) else -1)


def check_clip_range(clip_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """Validate an optional ``(low, high)`` range for clipping the x_0 estimate (e.g. ``(-1, 1)``).

    Raises:
        SamplerConfigError: not a pair with ``low < high``.
    """
    if clip_range is None:
        return None
    try:
        low, high = (float(v) for v in clip_range)
    except (TypeError, ValueError):
        raise SamplerConfigError(f"clip_range must be (low, high), got {clip_range!r}", "e.g. (-1.0, 1.0)") from None
    if not low < high:
        raise SamplerConfigError(f"clip_range needs low < high, got {clip_range!r}", "e.g. (-1.0, 1.0)")
    return (low, high)


def clip_x0(pred_x0: Tensor, clip_range: tuple[float, float] | None) -> Tensor:
    """Clamp the x_0 estimate to ``clip_range`` (guided-diffusion's ``clip_denoised``), or return it unchanged."""
    return pred_x0 if clip_range is None else pred_x0.clamp(*clip_range)
