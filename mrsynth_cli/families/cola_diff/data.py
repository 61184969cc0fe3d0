"""Slices, latents and conditions for CoLa-Diff training and inference.

The autoencoder is frozen while the diffusion model trains, so every training slice is encoded once
before the loop (and its left-right mirror image too when ``flip`` augmentation is on: the encoder is
not equivariant to flips); a training step then costs only the latent network. Guidance maps are
averaged over ``f x f`` blocks onto the latent grid, so they stay fractions (densities) of each tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mrsynth_cli.families.cola_diff.config import CoLaDiffConfig
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.training.data import SubjectArrays, tissue_key

__all__ = [
    "brain_slices",
    "LatentSubject",
    "encode_slices",
    "guidance_to_latent",
    "prepare_latent_subjects",
    "make_batch_sampler",
    "assemble_conditions",
]


def brain_slices(brain_mask: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    """Axial slices (last axis) whose brain covers more than ``min_fraction`` of the slice."""
    area = brain_mask.reshape(-1, brain_mask.shape[2]).mean(0)
    return np.flatnonzero(area > min_fraction)


@torch.no_grad()
def encode_slices(model, images: np.ndarray, device: torch.device, batch_size: int = 16) -> Tensor:
    """Posterior means of (N, H, W) slices in [0, 1], unscaled, as a CPU tensor (N, C, H/f, W/f)."""
    from mrsynth_cli.devices import map_batches

    def run(chunk: list[int]) -> list[Tensor]:
        batch = torch.from_numpy(np.ascontiguousarray(images[chunk], dtype=np.float32))[:, None].to(device)
        return list(model.encode(batch).float().cpu())

    return torch.stack(map_batches(run, list(range(len(images))), batch_size))


def guidance_to_latent(maps: dict[str, np.ndarray], names: tuple[str, ...], slices: np.ndarray, factor: int) -> Tensor:
    """(Z, len(names), H/f, W/f) block averages of model-space maps (X, Y, Z) at the given axial slices."""
    if not names:
        return torch.zeros(len(slices), 0, 1, 1)
    stack = np.stack([np.moveaxis(maps[n][..., slices], -1, 0) for n in names], axis=1)  # (Z, M, X, Y)
    return F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)), factor)


@dataclass
class LatentSubject:
    """One subject's training slices in latent space (unscaled latents, optionally mirrored copies)."""

    subject_id: str
    slices: np.ndarray
    latents: dict[Contrast, Tensor]  # (Z, C, h, w)
    guidance: dict[tuple[Contrast, ...], Tensor]  # contrast set -> (Z, M, h, w)
    latents_flipped: dict[Contrast, Tensor] | None = None


def prepare_latent_subjects(
    model, config: CoLaDiffConfig, subjects: list[SubjectArrays], device: torch.device, *, flips: bool
) -> list[LatentSubject]:
    """Encode every brain slice of the target and the inputs (and their mirror images if ``flips``)."""
    wanted = [config.target_contrast, *config.input_contrasts]
    factor = config.autoencoder.downsample
    out = []
    for subject in subjects:
        slices = brain_slices(subject.brain_mask)
        latents, flipped = {}, {}
        for contrast in wanted:
            if contrast not in subject.volumes:
                continue
            images = np.moveaxis(subject.volumes[contrast][..., slices], -1, 0)  # (Z, X, Y)
            latents[contrast] = encode_slices(model, images, device)
            if flips:
                flipped[contrast] = encode_slices(model, images[:, ::-1], device)
        guidance = {
            key: guidance_to_latent(maps, config.active_guidance_maps, slices, factor)
            for key, maps in subject.tissues.items()
        }
        out.append(LatentSubject(subject.subject_id, slices, latents, guidance, flipped if flips else None))
    return out


def assemble_conditions(
    config: CoLaDiffConfig, latents: dict[Contrast, Tensor], guidance: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """``y`` and the presence vector of a batch.

    Args:
        config: the model config (input order, latent channels, guidance maps).
        latents: unscaled latents (B, C, h, w) of the available inputs (absent ones are left out).
        guidance: (B, M, h, w) guidance maps, or None without structural guidance.
        scale: the latent scale factor.

    Returns:
        ``y`` (B, condition_channels, h, w): each input's scaled latent (zeros when absent), then the
        guidance maps; and ``presence`` (B, number of inputs).
    """
    some = next(iter(latents.values()))
    b = some.shape[0]
    parts, presence = [], []
    for contrast in config.input_contrasts:
        if contrast in latents:
            parts.append(latents[contrast] * scale)
            presence.append(torch.ones(b, dtype=some.dtype, device=some.device))
        else:
            parts.append(torch.zeros_like(some))
            presence.append(torch.zeros(b, dtype=some.dtype, device=some.device))
    if config.active_guidance_maps:
        parts.append(guidance.to(some))
    return torch.cat(parts, dim=1), torch.stack(presence, dim=1)


def make_batch_sampler(config: CoLaDiffConfig, subjects: list[LatentSubject], scale: float):
    """A ``sample_batch(rng)`` closure: (x0, cond, presence) latent batches with input dropout and flips."""
    target = config.target_contrast

    def sample_batch(rng: np.random.Generator) -> dict[str, Tensor]:
        x0s, conds, presences = [], [], []
        for _ in range(config.batch_size):
            subject = subjects[int(rng.integers(len(subjects)))]
            index = int(rng.integers(len(subject.slices)))
            available = [c for c in config.input_contrasts if c in subject.latents]
            keep = [c for c in available if rng.random() >= config.input_dropout]
            if not keep:
                keep = [available[int(rng.integers(len(available)))]]
            flip = subject.latents_flipped is not None and rng.random() < 0.5
            source = subject.latents_flipped if flip else subject.latents
            guidance = None
            if config.active_guidance_maps:
                key = tissue_key(keep) if config.guidance_subsets == "each" else tissue_key(available)
                guidance = subject.guidance[key][index : index + 1]
                if flip:
                    guidance = guidance.flip(-2)  # the slice's first axis is left-right
            cond, presence = assemble_conditions(
                config, {c: source[c][index : index + 1] for c in keep}, guidance, scale
            )
            x0s.append(source[target][index : index + 1] * scale)
            conds.append(cond)
            presences.append(presence)
        return {"x0": torch.cat(x0s), "cond": torch.cat(conds), "presence": torch.cat(presences)}

    return sample_batch
