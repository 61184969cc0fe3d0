"""Sampling a target volume with a trained CoLa-Diff model, slice by slice, through the engine's samplers.

For every axial brain slice: the available inputs are encoded by E, ``y`` is assembled (latents,
zeros for absent inputs, guidance maps), ``kappa_T ~ N(0, I)`` is drawn from the passed generator and
run down the chain by the sampler (DDIM, Kong & Ping's fast sampler, or ancestral DDPM) through a
``denoise_fn`` closure, and ``kappa_0 / scale`` is decoded by D.
"""

from __future__ import annotations

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.cola_diff.config import SAMPLERS, CoLaDiffConfig
from mrsynth_cli.families.cola_diff.data import assemble_conditions, brain_slices, encode_slices, guidance_to_latent
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.sampling import NoiseSchedule, initial_noise, make_sampler, sample

__all__ = ["noise_schedule", "build_sampler", "synthesize_volume"]


def noise_schedule(config: CoLaDiffConfig) -> NoiseSchedule:
    return NoiseSchedule(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
    )


def build_sampler(config: CoLaDiffConfig, name: str | None, steps: int | None):
    """``auto``/None -> the config's sampler; ``fast`` is Kong & Ping's VAR schedule with kappa = 0 (DDIM-rev).

    A distilled student (``config.distillation``) samples only with ``distilled`` on its own grid; a
    teacher cannot sample with ``distilled`` (the pipeline swaps in its student first).
    """
    name = config.sampler if name in (None, "auto") else name
    if name not in SAMPLERS:
        raise InputError(
            f"cola-diff models sample with {', '.join(SAMPLERS)}, not '{name}'", "pick --sampler ddim or fast"
        )
    schedule = noise_schedule(config)
    if config.distillation is not None:
        if name != "distilled":
            raise InputError(
                f"this cola-diff model is a {config.distillation.steps}-step distilled student; it cannot sample "
                f"with '{name}'", "use --sampler distilled (or auto), or its teacher for other samplers",
            )
        return make_sampler("distilled", schedule, grid=config.distillation.grid, num_inference_steps=steps)
    if name == "distilled":
        raise InputError(
            "this cola-diff model is not a distilled student",
            "train one with mrsynth train distill and import it, or pick --sampler ddim",
        )
    steps = steps or config.sampling_steps
    if name == "ddim":
        return make_sampler("ddim", schedule, eta=config.eta, num_inference_steps=steps)
    if name == "fast":
        return make_sampler(
            "fast", schedule, kind="var" if steps >= 2 else "step", kappa=0.0, num_inference_steps=steps
        )
    return make_sampler("ddpm", schedule, num_inference_steps=steps)


@torch.no_grad()
def synthesize_volume(
    model,
    config: CoLaDiffConfig,
    inputs: dict[Contrast, np.ndarray],
    brain_mask: np.ndarray,
    guidance: dict[str, np.ndarray] | None,
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
        model: a :class:`~mrsynth_cli.families.cola_diff.network.CoLaDiffModel` in eval mode.
        config: its config.
        inputs: model-space volumes (X, Y, Z) of the available inputs (others are ignored).
        brain_mask: model-space brain mask.
        guidance: model-space tissue maps (``None`` only without structural guidance).
        sampler: an engine sampler with its timesteps set (default: the config's).
        generator: the one randomness source (initial noise and any sampler noise).
        device: where the networks run.
        batch_size: slices per chunk.
        slices: which axial slices (default: every slice with brain).
        progress: progress bar per chunk.
    """
    from mrsynth_cli.devices import map_batches

    available = {c: v for c, v in inputs.items() if c in config.input_contrasts}
    if not available:
        raise InputError(f"none of {', '.join(config.inputs)} was given", "give at least one input this model accepts")
    if config.active_guidance_maps and guidance is None:
        raise InputError("this cola-diff model needs tissue masks (structural guidance)", "use --segmentation auto")
    sampler = sampler or build_sampler(config, None, None)
    model.eval()
    scale = float(model.latent_scale)
    factor = config.autoencoder.downsample
    output = np.zeros(brain_mask.shape, np.float32)
    chosen = brain_slices(brain_mask, 0.0) if slices is None else np.asarray(slices)

    def run(chunk: list[int]) -> list[np.ndarray]:
        zs = np.asarray(chunk)
        latents = {
            c: encode_slices(model, np.moveaxis(v[..., zs], -1, 0), device).to(device) for c, v in available.items()
        }
        maps = guidance_to_latent(guidance or {}, config.active_guidance_maps, zs, factor).to(device)
        cond, presence = assemble_conditions(config, latents, maps if config.active_guidance_maps else None, scale)
        shape = next(iter(latents.values())).shape

        def denoise_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(x_t, t, cond, presence)[:, : config.latent_channels]

        x_T = initial_noise(shape, generator, device=device)
        kappa = sample(denoise_fn, sampler, x_T, generator=generator, progress=progress)
        images = model.decode(kappa / scale).clamp(0.0, 1.0)
        return list(images.float().cpu().numpy()[:, 0])

    for z, image in zip(chosen, map_batches(run, list(chosen), batch_size), strict=True):
        output[..., z] = image
    return np.where(brain_mask, output, 0.0).astype(np.float32)
