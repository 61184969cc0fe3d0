"""Sampling a target volume with a trained MRDiff model, slice by slice, through the engine's samplers.

For every axial brain slice the clean conditions ``y`` (all inputs, scaled to [-1, 1]) and their
acquisition parameters stay fixed; ``x_T ~ N(0, I)`` from the passed generator is run down 50 DDIM
steps by default. The network predicts x_0 (``prediction_type = "sample"``), clipped to [-1, 1].
Conditions are never noised, so "held clean" needs no re-imposition step (the released code noises
all channels and resets the condition channels after every step).
"""

from __future__ import annotations

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mrdiff.config import SAMPLERS, MRDiffConfig
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.sampling import NoiseSchedule, initial_noise, make_sampler, sample

__all__ = ["noise_schedule", "build_sampler", "brain_slices", "synthesize_volume"]


def noise_schedule(config: MRDiffConfig) -> NoiseSchedule:
    return NoiseSchedule(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
    )


def build_sampler(config: MRDiffConfig, name: str | None, steps: int | None):
    """``auto``/None -> the config's sampler (DDIM, 50 steps by default); ``ddpm`` is ancestral sampling."""
    name = config.sampler if name in (None, "auto") else name
    if name not in SAMPLERS:
        raise InputError(
            f"mrdiff models sample with {', '.join(SAMPLERS)}, not '{name}'", "pick --sampler ddim or ddpm"
        )
    steps = steps or config.sampling_steps
    schedule = noise_schedule(config)
    common = {"prediction_type": "sample", "clip_range": (-1.0, 1.0), "num_inference_steps": steps}
    if name == "ddim":
        return make_sampler("ddim", schedule, eta=config.eta, **common)
    return make_sampler("ddpm", schedule, **common)


def brain_slices(brain_mask: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """Axial slices (last axis) whose brain covers more than ``min_fraction`` of the slice."""
    area = brain_mask.reshape(-1, brain_mask.shape[2]).mean(0)
    return np.flatnonzero(area > min_fraction)


@torch.no_grad()
def synthesize_volume(
    model,
    config: MRDiffConfig,
    inputs: dict[Contrast, np.ndarray],
    brain_mask: np.ndarray,
    acquisition: torch.Tensor,
    *,
    sampler=None,
    generator: torch.Generator | None,
    device: torch.device,
    batch_size: int = 8,
    slices: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The target on the model grid, in [0, 1], zero outside the brain.

    Args:
        model: an :class:`~mrsynth_cli.families.mrdiff.network.MRDiffNetwork` in eval mode.
        config: its config.
        inputs: model-space volumes (X, Y, Z) in [0, 1] of every input of the model.
        brain_mask: model-space brain mask.
        acquisition: (K, 3) TR, TE, TI in seconds per input (:func:`~.physics.acquisition_tensor`). The
            generator does not read them (Fig. 1); they are checked for shape only.
        sampler: an engine sampler with its timesteps set (default: the config's).
        generator: the one randomness source.
        device: where the network runs.
        batch_size: slices per chunk.
        slices: which axial slices (default: every slice with brain).
        progress: progress bar per chunk.

    Raises:
        InputError: an input of the model is missing.
    """
    from mrsynth_cli.devices import map_batches

    missing = [str(c) for c in config.input_contrasts if c not in inputs]
    if missing:
        raise InputError(
            f"this mrdiff model needs {', '.join(missing)} as well", f"give all of {', '.join(config.inputs)}"
        )
    if tuple(acquisition.shape) != (len(config.inputs), 3):
        raise InputError(f"acquisition parameters of shape {tuple(acquisition.shape)}", "report a bug")
    sampler = sampler or build_sampler(config, None, None)
    model.eval()
    output = np.zeros(brain_mask.shape, np.float32)
    chosen = brain_slices(brain_mask, 0.0) if slices is None else np.asarray(slices)
    stack = np.stack([inputs[c] for c in config.input_contrasts])  # (K, X, Y, Z)

    def run(chunk: list[int]) -> list[np.ndarray]:
        zs = np.asarray(chunk)
        y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(stack[..., zs], -1, 0), dtype=np.float32))
        y = (y * 2.0 - 1.0).to(device)

        def denoise_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            e_t, skips, emb = model.encode(x_t, y, t)
            return model.generate(e_t, skips, emb)

        x_T = initial_noise((len(zs), 1, *y.shape[-2:]), generator, device=device)
        x0 = sample(denoise_fn, sampler, x_T, generator=generator, progress=progress)
        return list(((x0.float().cpu().numpy()[:, 0] + 1.0) / 2.0).clip(0.0, 1.0))

    for z, image in zip(chosen, map_batches(run, list(chosen), batch_size), strict=True):
        output[..., z] = image
    return np.where(brain_mask, output, 0.0).astype(np.float32)
