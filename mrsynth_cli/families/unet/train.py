"""``mrsynth train unet``: fit the regression baseline on subject folders.

Each step draws random axial slices (with brain) from random training subjects, hides each input
with probability ``input_dropout`` (keeping at least one, so the model learns every subset),
augments them (:mod:`mrsynth_cli.training.augment`; left-right flips by default) and minimises L1
to the target inside the brain mask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrsynth_cli.families.unet.config import UNetConfig
from mrsynth_cli.families.unet.network import build_network, predict_volume, stack_inputs
from mrsynth_cli.training.augment import AugmentSettings, augment_sample
from mrsynth_cli.training.data import SubjectArrays, load_training_subjects, split_validation
from mrsynth_cli.training.distributed import setup_distributed
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = ["train_unet", "make_batch_sampler", "validation_metrics"]

log = logging.getLogger(__name__)
FAMILY = "unet"


def _brain_slices(subject: SubjectArrays, min_fraction: float = 0.02) -> np.ndarray:
    area = subject.brain_mask.reshape(-1, subject.brain_mask.shape[2]).mean(0)
    return np.flatnonzero(area > min_fraction)


def make_batch_sampler(config: UNetConfig, subjects: list[SubjectArrays], augment: AugmentSettings | None = None):
    """A ``sample_batch(rng)`` closure drawing (inputs, target, mask) slice batches."""
    augment = augment or AugmentSettings()
    slices = [_brain_slices(s) for s in subjects]
    target = config.target_contrast

    def sample_batch(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        xs, ys, ms = [], [], []
        for _ in range(config.batch_size):
            index = int(rng.integers(len(subjects)))
            subject = subjects[index]
            z = int(rng.choice(slices[index]))
            available = [c for c in config.input_contrasts if c in subject.volumes]
            keep = [c for c in available if rng.random() >= config.input_dropout]
            if not keep:
                keep = [available[int(rng.integers(len(available)))]]
            shape = subject.brain_mask.shape[:2]
            images = [
                subject.volumes[c][..., z] if c in keep else np.zeros(shape, np.float32) for c in config.input_contrasts
            ]
            images, (y,), m = augment_sample(
                images, [subject.volumes[target][..., z]], subject.brain_mask[..., z], rng, augment
            )
            volumes = {c: image for c, image in zip(config.input_contrasts, images, strict=True) if c in keep}
            xs.append(stack_inputs(config, volumes, shape))
            ys.append(y[None])
            ms.append(m[None].astype(np.float32))
        return {"x": torch.from_numpy(np.stack(xs)), "y": torch.from_numpy(np.stack(ys)), "mask": torch.from_numpy(np.stack(ms))}

    return sample_batch


def l1_in_brain(network: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """L1 to the target inside the brain, plus a small weight outside (so the background stays 0)."""
    device = next(network.parameters()).device
    x, y, mask = batch["x"].to(device), batch["y"].to(device), batch["mask"].to(device)
    error = (network(x) - y).abs()
    weight = mask + 0.05 * (1 - mask)
    return (error * weight).sum() / weight.sum()


def validation_metrics(
    network: torch.nn.Module, config: UNetConfig, subjects: list[SubjectArrays], device: torch.device
) -> dict[str, float]:
    """PSNR/SSIM (scaled [0, 1] model space, inside the brain) on held-out subjects with all their inputs."""
    from mrsynth_cli.metrics.image import psnr, ssim3d

    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for subject in subjects:
        inputs = {c: v for c, v in subject.volumes.items() if c in config.input_contrasts}
        pred = predict_volume(network, config, inputs, subject.brain_mask, device=device)
        ref = subject.volumes[config.target_contrast]
        scores["psnr"].append(psnr(pred, ref, subject.brain_mask))
        scores["ssim"].append(ssim3d(pred, ref, subject.brain_mask))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train_unet(
    data: list[Path],
    config: UNetConfig,
    out_dir: Path,
    settings: TrainSettings,
    *,
    validation_subjects: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train a ``unet`` model; returns the checkpoint folder and a summary (subjects, final validation)."""
    contrasts = [config.target_contrast, *config.input_contrasts]
    ctx = setup_distributed(settings.device)
    with ctx.main_first():  # under torchrun, rank 0 fills the preprocessing cache, the others read it
        subjects = load_training_subjects(
            data,
            contrasts,
            required=[config.target_contrast],
            spacing_mm=config.spacing_mm,
            model_shape=config.model_shape,
            cache_dir=cache_dir,
        )
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    log.info("training on %s; validating on %s", [s.subject_id for s in train_subjects], [s.subject_id for s in val_subjects])
    torch.manual_seed(settings.seed)  # network initialisation only; data and noise use passed generators
    network = build_network(config)
    validate = (lambda net: validation_metrics(net, config, val_subjects, ctx.device)) if val_subjects else None
    ckpt = train_loop(
        family=FAMILY,
        config=config.to_dict(),
        network=network,
        sample_batch=make_batch_sampler(config, train_subjects, AugmentSettings.parse(settings.augment)),
        compute_loss=l1_in_brain,
        out_dir=out_dir,
        settings=settings,
        validate=validate,
        resume=resume,
        progress=progress,
        distributed=ctx,
    )
    ctx.close()
    summary = {
        "train_subjects": [s.subject_id for s in train_subjects],
        "validation_subjects": [s.subject_id for s in val_subjects],
    }
    return ckpt, summary
