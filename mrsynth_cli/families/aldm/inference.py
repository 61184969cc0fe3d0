"""Synthesis with a trained ALDM model: one source volume -> every asked target, whole volumes.

The source is encoded once (E, quantised); for each target the condition is ``SPADE(z_src, y)``
(or the source latent / nothing for the ablations), ``z_T ~ N(0, I)`` is drawn from the passed
generator, run down the chain by the engine's sampler (DDIM, Kong & Ping's fast sampler, or ancestral
DDPM) through a ``denoise_fn`` closure, divided by the latent scale, snapped to the codebook (LDM's VQ
decode) and decoded by D. All targets run as one batch. The SPADE-only ablation decodes
``SPADE(z_src, y)`` directly.
"""

from __future__ import annotations

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.aldm.config import SAMPLERS, AldmConfig
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.sampling import NoiseSchedule, initial_noise, make_sampler, sample

__all__ = ["noise_schedule", "build_sampler", "translate"]


def noise_schedule(config: AldmConfig) -> NoiseSchedule:
    return NoiseSchedule(
        num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
        beta_start=config.beta_start, beta_end=config.beta_end,
    )


def build_sampler(config: AldmConfig, name: str | None, steps: int | None):
    """``auto``/None -> the config's sampler; ``fast`` is Kong & Ping's schedule with kappa = 0."""
    name = config.sampler if name in (None, "auto") else name
    if name not in SAMPLERS:
        raise InputError(f"aldm models sample with {', '.join(SAMPLERS)}, not '{name}'", "pick --sampler ddim or fast")
    steps = steps or config.sampling_steps
    schedule = noise_schedule(config)
    if name == "ddim":
        return make_sampler("ddim", schedule, eta=config.eta, num_inference_steps=steps)
    if name == "fast":
        kind = "var" if steps >= 2 else "step"
        return make_sampler("fast", schedule, kind=kind, kappa=0.0, num_inference_steps=steps)
    return make_sampler("ddpm", schedule, num_inference_steps=steps)


@torch.no_grad()
def translate(
    model,
    config: AldmConfig,
    source: np.ndarray,
    targets: list[Contrast],
    *,
    sampler=None,
    generator: torch.Generator | None,
    device: torch.device,
    progress: bool = False,
) -> dict[Contrast, np.ndarray]:
    """Each target on the model grid, in [0, 1] (not masked).

    Args:
        model: an :class:`~mrsynth_cli.families.aldm.network.AldmModel` (eval mode is set here).
        config: its config.
        source: the model-space source volume (X, Y, Z) in [0, 1].
        targets: contrasts to synthesize (each must be one of ``config.contrasts``).
        sampler: an engine sampler with its timesteps set (default: the config's).
        generator: the one randomness source (initial noise and sampler noise).
        device: where the networks run.
        progress: a progress bar over the sampling steps.
    """
    if not targets:
        return {}
    model.eval()
    indices = torch.tensor([config.target_index(t) for t in targets], device=device)
    x = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None, None].to(device)
    z_src = model.autoencoder.encode(x).expand(len(targets), -1, *([-1] * config.spatial_dims))
    if not config.use_diffusion:
        latent = model.autoencoder.snap(model.spade(z_src, indices))
    else:
        sampler = sampler or build_sampler(config, None, None)
        condition = model.condition(z_src, indices)

        def denoise_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model.eps(z_t, t, condition, indices)

        z_T = initial_noise(tuple(z_src.shape), generator, device=device)
        latent = sample(denoise_fn, sampler, z_T, generator=generator, progress=progress) / model.latent_scale
        if config.quantize_samples:
            latent = model.autoencoder.snap(latent)
    images = model.autoencoder.decode(latent).clamp(0.0, 1.0).float().cpu().numpy()[:, 0]
    return {t: images[i] for i, t in enumerate(targets)}
