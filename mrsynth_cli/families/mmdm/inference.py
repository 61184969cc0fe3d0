"""Sampling a TOF-MRA volume with MMDM: the reverse bridge of eq. 2 on every 2.5D window, overlaps averaged.

**All paths in one engine loop.** The paper samples every path from its own source (``x^m_T = x^m``)
and updates each with the *cooperative* prediction (Fig. 1b). Here the paths' states are stacked on
the batch axis, ``X = [x^{t1}_t; x^{t2}_t; x^{flair}_t]``, and run through the engine's
:class:`~mrsynth_cli.sampling.bridge.BrownianBridgeSampler` (objective ``"x0"``) and loop: the
closure computes the fused x_0 from all paths and returns it for each of them, and the sampler takes
every path one posterior step with Gaussian noise drawn from the passed generator (independent per
path; the third-party copy used one shared *uniform* draw). After the last step every path holds x_0.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mmdm.config import SAMPLERS, MMDMConfig
from mrsynth_cli.families.mmdm.windows import extract_windows, sliding_window_average, window_starts
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.sampling import sample
from mrsynth_cli.sampling.bridge import BridgeSchedule, BrownianBridgeSampler

__all__ = [
    "bridge_schedule",
    "build_sampler",
    "to_bridge",
    "from_bridge",
    "brain_window_starts",
    "synthesize_windows",
    "synthesize_volume",
]

log = logging.getLogger(__name__)


def bridge_schedule(config: MMDMConfig) -> BridgeSchedule:
    return BridgeSchedule(config.num_train_timesteps, config.m_min, config.m_max, config.max_var)


def build_sampler(config: MMDMConfig, name: str | None = None, steps: int | None = None) -> BrownianBridgeSampler:
    """The reverse bridge (eq. 2) with ``steps`` (default: the config's) and the config's eta."""
    if name not in (None, "auto", *SAMPLERS):
        raise InputError(f"mmdm models sample with the Brownian bridge, not '{name}'", "use --sampler bridge (or auto)")
    return BrownianBridgeSampler(
        bridge_schedule(config),
        objective="x0",
        eta=config.eta,
        clip_range=(-1.0, 1.0),
        num_inference_steps=steps or config.sampling_steps,
    )


def to_bridge(x: np.ndarray | torch.Tensor):
    """Model-space [0, 1] -> the bridge's [-1, 1]."""
    return x * 2.0 - 1.0


def from_bridge(x):
    return (x + 1.0) / 2.0


def brain_window_starts(config: MMDMConfig, brain_mask: np.ndarray) -> list[int]:
    """Windows every ``window_stride`` slices covering every axial slice with brain."""
    has_brain = np.flatnonzero(brain_mask.reshape(-1, brain_mask.shape[2]).any(0))
    if has_brain.size == 0:
        raise InputError("the brain mask is empty", "check the inputs (no brain was found)")
    return window_starts(
        brain_mask.shape[2], config.slices, config.window_stride, int(has_brain[0]), int(has_brain[-1])
    )


@torch.no_grad()
def synthesize_windows(
    model,
    config: MMDMConfig,
    sources: dict[Contrast, torch.Tensor],
    sampler: BrownianBridgeSampler,
    generator: torch.Generator,
    progress: bool = False,
) -> torch.Tensor:
    """Sample x_0 for a batch of windows.

    Args:
        model: an :class:`~mrsynth_cli.families.mmdm.network.MMDMModel` in eval mode.
        config: its config.
        sources: ``(B, slices, H, W)`` windows in [-1, 1] of the available inputs.
        sampler: the bridge sampler (timesteps set).
        generator: the randomness.

    Returns:
        ``(B, slices, H, W)`` in [-1, 1].
    """
    paths = [c for c in config.path_contrasts if c in sources]
    batch = next(iter(sources.values())).shape[0]
    state0 = torch.cat([sources[c] for c in paths])

    def denoise_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        states = dict(zip(paths, x_t.split(batch), strict=True))
        fused, _ = model(states, t[:batch], sources)
        return fused.repeat(len(paths), *([1] * (fused.ndim - 1)))

    out = sample(denoise_fn, sampler, state0, generator=generator, progress=progress)
    return out[:batch]


@torch.no_grad()
def synthesize_volume(
    model,
    config: MMDMConfig,
    inputs: dict[Contrast, np.ndarray],
    brain_mask: np.ndarray,
    *,
    sampler: BrownianBridgeSampler | None = None,
    generator: torch.Generator,
    device: torch.device,
    batch_size: int = 4,
    starts: list[int] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The target on the model grid, in [0, 1], zero outside the brain.

    Args:
        model, config: the model in eval mode and its config.
        inputs: model-space volumes ``(X, Y, Z)`` in [0, 1].
        brain_mask: model-space brain mask.
        sampler: the bridge sampler (default: the config's steps).
        generator: the one randomness source.
        device: where the network runs.
        batch_size: windows per sampling run.
        starts: window starts (default: :func:`brain_window_starts`); slices no window covers stay 0.
        progress: a progress bar per batch of windows.

    Raises:
        InputError: no path's source was given, or a ``concat`` model misses an input.
    """
    from mrsynth_cli.devices import map_batches

    available = [c for c in config.path_contrasts if c in inputs]
    if not available:
        raise InputError(f"none of {', '.join(config.inputs)} was given", "give the inputs this model was trained on")
    needed = {c for path in available for c in config.condition_contrasts[path]}
    missing = sorted(str(c) for c in needed if c not in inputs)
    if missing:
        raise InputError(f"this mmdm model needs {', '.join(missing)} as well", "give every input it was trained on")
    if config.variant == "mmdm" and len(available) < len(config.path_contrasts):
        log.warning(
            "mmdm: %s missing; x_0 is the mean of the %s path(s), without the cross-modal fusion",
            ", ".join(str(c) for c in config.path_contrasts if c not in inputs),
            ", ".join(map(str, available)),
        )
    sampler = sampler or build_sampler(config)
    model.eval()
    starts = brain_window_starts(config, brain_mask) if starts is None else starts
    used = sorted(needed | set(available), key=list(Contrast).index)

    def predict(chunk: list[int]) -> np.ndarray:
        def run(items: list[int]) -> list[np.ndarray]:
            sources = {
                c: to_bridge(torch.from_numpy(extract_windows(inputs[c], items, config.slices))).to(device)
                for c in used
            }
            x0 = synthesize_windows(model, config, sources, sampler, generator, progress)
            return list(from_bridge(x0).clamp(0.0, 1.0).float().cpu().numpy())

        return np.stack(map_batches(run, chunk, batch_size))

    volume = sliding_window_average(predict, brain_mask.shape, starts, config.slices, batch_size)
    return np.where(brain_mask, volume, 0.0).astype(np.float32)
