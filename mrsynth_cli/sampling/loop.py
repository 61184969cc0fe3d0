"""The denoising loop, written once for every sampler and every model family.

A family adapts itself to the loop with a closure ``denoise_fn(x_t, t) -> model_output`` that captures
its conditions (source contrasts, masks, class labels, a 2.5D slab, a latent decoder...). The loop
never looks at the model, and the sampler never branches on the model type (k-diffusion's
``external.py`` pattern).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mrsynth_cli.sampling.base import Sampler, draw_noise

__all__ = ["DenoiseFn", "initial_noise", "sample"]

#: ``denoise_fn(x_t, t) -> model_output``: ``t`` is a Tensor[batch] of the current timestep, int64 for
#: integer timesteps and float32 for fractional ones (Kong & Ping's VAR schedule).
DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def initial_noise(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``x_T ~ N(0, I)`` for the Gaussian samplers (DDPM, DDIM, fast), drawn with :func:`draw_noise`."""
    return draw_noise(shape, generator, device, dtype)


def _timestep_batch(t: int | float, batch: int, device: torch.device) -> Tensor:
    """The timestep repeated over the batch: int64 for an int, float32 for a fractional timestep."""
    dtype = torch.long if isinstance(t, int) else torch.float32
    return torch.full((batch,), t, dtype=dtype, device=device)


@torch.no_grad()
def sample(
    denoise_fn: DenoiseFn,
    sampler: Sampler,
    x_T: Tensor,
    *,
    generator: torch.Generator | None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> Tensor:
    """Run ``sampler`` from ``x_T`` down to a sample of x_0.

    Args:
        denoise_fn: the family's closure ``(x_t, t: Tensor[batch]) -> model_output``.
        sampler: a sampler whose :meth:`~Sampler.set_timesteps` has been called.
        x_T: the initial state: Gaussian noise (:func:`initial_noise`) or, for the Brownian bridge, the
            source image ``y``.
        generator: the random generator for the noise the sampler adds (may be None only for a
            deterministic sampler, e.g. DDIM with ``eta = 0``).
        callback: called after every step with ``{"i", "t", "x_t", "prev_sample", "pred_x0"}``: the step
            index, the timestep the model saw, the sample it saw, the new sample and the x_0 estimate.
        progress: show a progress bar on stderr.

    Returns:
        The final sample (the x_0 estimate of the last step, plus nothing else), shaped like ``x_T``.
    """
    # 1. The timesteps: fixed by sampler.set_timesteps(n) before the loop.
    timesteps = sampler.timesteps
    bar = task = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(transient=True, console=Console(stderr=True))
        bar.start()
        task = bar.add_task("sampling", total=len(timesteps))
    try:
        # 2. The initial state; the sampler may keep it (the bridge's source y).
        x_t = x_T
        sampler.start(x_T)
        for i, t in enumerate(timesteps):
            # 3. The model's output at (x_t, t); conditions live in the closure.
            t_batch = _timestep_batch(t, x_t.shape[0], x_t.device)
            model_output = denoise_fn(x_t, t_batch)
            # 4. One sampler step: the x_0 estimate and the state at the next timestep.
            out = sampler.step(model_output, i, x_t, generator=generator)
            # 5. Report, then move on.
            if callback is not None:
                callback({"i": i, "t": t, "x_t": x_t, "prev_sample": out.prev_sample, "pred_x0": out.pred_x0})
            x_t = out.prev_sample
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    # 6. After the last step the state is the x_0 estimate.
    return x_t
