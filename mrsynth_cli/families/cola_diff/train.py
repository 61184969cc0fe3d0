"""``mrsynth train cola-diff``: the conditioned latent diffusion model on a trained autoencoder.

1. The autoencoder checkpoint (``mrsynth train autoencoder``) is read; its config and the sha256 of its
   weights go into the model config, its weights into the model (frozen, saved with it).
2. Subjects are preprocessed (cached); with structural guidance, tissue maps are computed from the
   input contrasts only, for every subset of them (``guidance_subsets = "each"``), and cached.
3. Every training slice is encoded once; the latent scale is 1 / std of the training latents.
4. Each step draws slices, hides inputs with probability ``input_dropout`` (at least one kept),
   mirrors left-right with ``--augment flip``, draws ``t`` and the noise from the loop's generator, and
   minimises ``L_eps + L_KL`` (:mod:`~mrsynth_cli.families.cola_diff.losses`).
5. Validation (on ``--validation-subject``) samples ``validation_slices`` slices per subject with DDIM
   ``validation_steps`` steps and reports PSNR/SSIM in the scaled model space.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.cola_diff.autoencoder import load_autoencoder_checkpoint
from mrsynth_cli.families.cola_diff.config import CoLaDiffConfig
from mrsynth_cli.families.cola_diff.data import brain_slices, make_batch_sampler, prepare_latent_subjects
from mrsynth_cli.families.cola_diff.inference import build_sampler, noise_schedule, synthesize_volume
from mrsynth_cli.families.cola_diff.losses import diffusion_loss
from mrsynth_cli.families.cola_diff.network import CoLaDiffModel
from mrsynth_cli.training.augment import AugmentSettings
from mrsynth_cli.training.data import (
    SubjectArrays,
    TissueRequest,
    load_training_subjects,
    split_validation,
    tissue_key,
)
from mrsynth_cli.training.distributed import setup_distributed
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = ["FAMILY", "with_autoencoder", "make_loss", "validation_metrics", "train_cola_diff"]

log = logging.getLogger(__name__)
FAMILY = "cola-diff"


def with_autoencoder(config: CoLaDiffConfig, checkpoint: Path) -> tuple[CoLaDiffConfig, dict[str, Tensor]]:
    """``config`` resolved against an autoencoder checkpoint (its config, grid and weights sha256) and its weights."""
    ae_config, state, sha = load_autoencoder_checkpoint(checkpoint)
    missing = [c for c in [config.target_contrast, *config.input_contrasts] if c not in ae_config.contrast_list]
    if missing:
        raise InputError(
            f"the autoencoder was not trained on {', '.join(map(str, missing))}",
            "train it with those contrasts (mrsynth train autoencoder --contrasts ...)",
        )
    resolved = replace(
        config,
        autoencoder=ae_config,
        autoencoder_sha256=sha,
        spacing_mm=ae_config.spacing_mm,
        model_shape=ae_config.model_shape,
    )
    return resolved, state


def make_loss(config: CoLaDiffConfig):
    """``compute_loss(network, batch, generator)``: t ~ U{0..T-1}, kappa_t by eq. 1, then L_eps + L_KL."""
    schedule = noise_schedule(config)

    def compute_loss(network: torch.nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        module = getattr(network, "module", network)
        device = module.latent_scale.device
        x0 = batch["x0"].to(device)
        t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = schedule.q_sample(x0, t, noise)
        output = network(x_t, t.to(device), batch["cond"].to(device), batch["presence"].to(device))
        loss, _ = diffusion_loss(
            schedule, output, x0, x_t, noise, t, learned_variance=config.learned_variance, kl_weight=config.kl_weight
        )
        return loss

    return compute_loss


def validation_metrics(
    model, config: CoLaDiffConfig, subjects: list[SubjectArrays], device: torch.device
) -> dict[str, float]:
    """PSNR/SSIM (2D, inside the brain, scaled model space) of DDIM samples on evenly spaced slices, all inputs."""
    from mrsynth_cli.metrics.image import psnr, ssim2d_axial

    if config.distillation is not None:  # a student samples on its own grid
        sampler = build_sampler(config, "distilled", None)
    else:
        sampler = build_sampler(config, "ddim", config.validation_steps)
    generator = torch.Generator().manual_seed(0)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for subject in subjects:
        slices = brain_slices(subject.brain_mask)
        picked = slices[np.linspace(0, len(slices) - 1, min(config.validation_slices, len(slices))).round().astype(int)]
        inputs = {c: v for c, v in subject.volumes.items() if c in config.input_contrasts}
        guidance = subject.tissues.get(tissue_key(inputs)) if config.active_guidance_maps else None
        pred = synthesize_volume(
            model,
            config,
            inputs,
            subject.brain_mask,
            guidance,
            sampler=sampler,
            generator=generator,
            device=device,
            slices=picked,
        )
        ref = subject.volumes[config.target_contrast]
        mask = np.zeros_like(subject.brain_mask)
        mask[..., picked] = subject.brain_mask[..., picked]
        scores["psnr"].append(psnr(pred[..., picked], ref[..., picked], mask[..., picked]))
        scores["ssim"].append(ssim2d_axial(pred[..., picked], ref[..., picked], mask[..., picked]))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train_cola_diff(
    data: list[Path],
    config: CoLaDiffConfig,
    autoencoder: Path,
    out_dir: Path,
    settings: TrainSettings,
    *,
    validation_subjects: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train a ``cola-diff`` model on ``autoencoder``; returns the checkpoint folder and a summary.

    Raises:
        InputError: a bad autoencoder checkpoint, augmentation, or subject list.
    """
    augment = AugmentSettings.parse(settings.augment)
    if set(augment.enabled) - {"flip"}:
        raise InputError(
            "cola-diff training encodes every slice once, so only --augment flip (or none) applies",
            "use --augment flip",
        )
    config, ae_state = with_autoencoder(config, autoencoder)
    ctx = setup_distributed(settings.device)
    tissues = None
    if config.active_guidance_maps:
        tissues = TissueRequest(
            method=config.segmentation, sources=tuple(config.input_contrasts), subsets=config.guidance_subsets == "each"
        )
    with ctx.main_first():
        subjects = load_training_subjects(
            data,
            [config.target_contrast, *config.input_contrasts],
            required=[config.target_contrast],
            spacing_mm=config.spacing_mm,
            model_shape=config.model_shape,
            cache_dir=cache_dir,
            tissues=tissues,
        )
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    log.info(
        "cola-diff: training on %s; validating on %s",
        [s.subject_id for s in train_subjects],
        [s.subject_id for s in val_subjects],
    )
    torch.manual_seed(settings.seed)  # network initialisation only; data and noise use passed generators
    model = CoLaDiffModel(config)
    model.autoencoder.load_state_dict(ae_state, strict=True)
    model.to(ctx.device)
    latent_subjects = prepare_latent_subjects(
        model, config, train_subjects, ctx.device, flips="flip" in augment.enabled
    )
    everything = torch.cat([t.flatten() for s in latent_subjects for t in s.latents.values()])
    scale = float(1.0 / everything.std().clamp_min(1e-6))
    model.latent_scale.fill_(scale)
    log.info("latent scale factor %.4f (%d slices)", scale, sum(len(s.slices) for s in latent_subjects))
    validate = (lambda net: validation_metrics(net, config, val_subjects, ctx.device)) if val_subjects else None
    ckpt = train_loop(
        family=FAMILY,
        config=config.to_dict(),
        network=model,
        sample_batch=make_batch_sampler(config, latent_subjects, scale),
        compute_loss=make_loss(config),
        out_dir=out_dir,
        settings=settings,
        validate=validate,
        resume=resume,
        progress=progress,
        distributed=ctx,
    )
    ctx.close()
    return ckpt, {
        "train_subjects": [s.subject_id for s in train_subjects],
        "validation_subjects": [s.subject_id for s in val_subjects],
        "latent_scale": scale,
    }
