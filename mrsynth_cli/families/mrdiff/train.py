"""``mrsynth train mrdiff``: train an MRDiff model on subject folders whose inputs carry TR/TE.

1. Subjects with the target and every input are preprocessed (cached) onto the model grid.
2. Each subject's acquisition parameters come from its sidecars, overridden by ``--tr/--te/--ti``;
   a subject without them is an error naming the file.
3. Each step draws axial brain slices (mirrored left-right with ``--augment flip``), scales them to
   [-1, 1], draws ``t`` and the N noises from the loop's generator and minimises eq. 11
   (:mod:`~mrsynth_cli.families.mrdiff.losses`).
4. Validation (``--validation-subject``) samples ``validation_slices`` slices per subject with
   ``validation_steps`` DDIM steps and reports PSNR/SSIM inside the brain on the [0, 1] model scale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mrdiff.config import MRDiffConfig
from mrsynth_cli.families.mrdiff.inference import brain_slices, build_sampler, noise_schedule, synthesize_volume
from mrsynth_cli.families.mrdiff.losses import mrdiff_loss
from mrsynth_cli.families.mrdiff.network import MRDiffNetwork
from mrsynth_cli.families.mrdiff.physics import acquisition_tensor, resolve_acquisition
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.subjects import discover_subjects
from mrsynth_cli.training.augment import AugmentSettings
from mrsynth_cli.training.data import SubjectArrays, load_training_subjects, split_validation
from mrsynth_cli.training.distributed import setup_distributed
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = ["FAMILY", "subject_acquisitions", "make_batch_sampler", "make_loss", "validation_metrics", "train_mrdiff"]

log = logging.getLogger(__name__)
FAMILY = "mrdiff"


def subject_acquisitions(
    roots: list[Path],
    subject_ids: list[str],
    contrasts: list[Contrast],
    overrides: Mapping[Contrast, Mapping[str, float]] | None = None,
) -> dict[str, Tensor]:
    """Subject ID -> (K, 3) TR/TE/TI of its inputs, from its sidecars and the flags.

    Raises:
        InputError: a subject's input has neither a sidecar value nor a flag.
    """
    files: dict[str, dict[Contrast, Path]] = {}
    for root in roots:
        for subject in discover_subjects(root):
            files.setdefault(subject.subject_id, subject.files)
    return {
        sid: acquisition_tensor(contrasts, resolve_acquisition(contrasts, {c: files[sid].get(c) for c in contrasts},
                                                               overrides))
        for sid in subject_ids
    }


def make_batch_sampler(config: MRDiffConfig, subjects: list[SubjectArrays], acquisitions: dict[str, Tensor],
                       flips: bool):
    """A ``sample_batch(rng)`` closure: (x0, y, acquisition) slice batches in [-1, 1]."""
    slices = [brain_slices(s.brain_mask) for s in subjects]
    if any(len(s) == 0 for s in slices):
        empty = [s.subject_id for s, z in zip(subjects, slices, strict=True) if len(z) == 0]
        raise InputError(f"subject(s) {empty} have no brain slice on the model grid", "check their brain masks")

    def sample_batch(rng: np.random.Generator) -> dict[str, Tensor]:
        x0s, ys, acqs = [], [], []
        for _ in range(config.batch_size):
            index = int(rng.integers(len(subjects)))
            subject = subjects[index]
            z = int(rng.choice(slices[index]))
            images = [subject.volumes[config.target_contrast][..., z]]
            images += [subject.volumes[c][..., z] for c in config.input_contrasts]
            stack = np.stack(images)
            if flips and rng.random() < 0.5:
                stack = stack[:, ::-1]  # the slice's first axis is left-right
            stack = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)) * 2.0 - 1.0
            x0s.append(stack[:1])
            ys.append(stack[1:])
            acqs.append(acquisitions[subject.subject_id])
        return {"x0": torch.stack(x0s), "y": torch.stack(ys), "acquisition": torch.stack(acqs)}

    return sample_batch


def make_loss(config: MRDiffConfig):
    """``compute_loss(network, batch, generator)``: eq. 11 on the batch."""
    schedule = noise_schedule(config)

    def compute_loss(network: torch.nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        device = next(network.parameters()).device
        loss, _ = mrdiff_loss(
            network, config, schedule, batch["x0"].to(device), batch["y"].to(device),
            batch["acquisition"].to(device), generator,
        )
        return loss

    return compute_loss


def validation_metrics(
    model, config: MRDiffConfig, subjects: list[SubjectArrays], acquisitions: dict[str, Tensor], device: torch.device
) -> dict[str, float]:
    """PSNR/SSIM (2D, inside the brain, [0, 1] model scale) of DDIM samples on evenly spaced slices."""
    from mrsynth_cli.metrics.image import psnr, ssim2d_axial

    sampler = build_sampler(config, "ddim", config.validation_steps)
    generator = torch.Generator().manual_seed(0)
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for subject in subjects:
        slices = brain_slices(subject.brain_mask)
        picked = slices[np.linspace(0, len(slices) - 1, min(config.validation_slices, len(slices))).round().astype(int)]
        pred = synthesize_volume(
            model, config, subject.volumes, subject.brain_mask, acquisitions[subject.subject_id],
            sampler=sampler, generator=generator, device=device, slices=picked,
        )
        ref = subject.volumes[config.target_contrast]
        mask = subject.brain_mask[..., picked]
        scores["psnr"].append(psnr(pred[..., picked], ref[..., picked], mask))
        scores["ssim"].append(ssim2d_axial(pred[..., picked], ref[..., picked], mask))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train_mrdiff(
    data: list[Path],
    config: MRDiffConfig,
    out_dir: Path,
    settings: TrainSettings,
    *,
    acquisition_overrides: Mapping[Contrast, Mapping[str, float]] | None = None,
    validation_subjects: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train an ``mrdiff`` model; returns the checkpoint folder and a summary.

    Raises:
        InputError: bad augmentation, subjects without every input, or inputs without TR/TE.
    """
    augment = AugmentSettings.parse(settings.augment)
    if set(augment.enabled) - {"flip"}:
        raise InputError(
            "mrdiff training keeps each input's intensities physical, so only --augment flip (or none) applies",
            "use --augment flip",
        )
    contrasts = [config.target_contrast, *config.input_contrasts]
    ctx = setup_distributed(settings.device)
    with ctx.main_first():
        subjects = load_training_subjects(
            data, contrasts, required=contrasts, spacing_mm=config.spacing_mm, model_shape=config.model_shape,
            cache_dir=cache_dir,
        )
    acquisitions = subject_acquisitions(data, [s.subject_id for s in subjects], config.input_contrasts,
                                        acquisition_overrides)
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    medians = torch.stack([acquisitions[s.subject_id] for s in train_subjects]).median(dim=0).values
    config = replace(config, training_acquisition=tuple(tuple(row) for row in medians.tolist()))
    log.info("mrdiff: training on %s; validating on %s", [s.subject_id for s in train_subjects],
             [s.subject_id for s in val_subjects])
    torch.manual_seed(settings.seed)  # network initialisation only; data and noise use passed generators
    network = MRDiffNetwork(config)
    validate = (
        (lambda net: validation_metrics(net, config, val_subjects, acquisitions, ctx.device)) if val_subjects else None
    )
    ckpt = train_loop(
        family=FAMILY,
        config=config.to_dict(),
        network=network,
        sample_batch=make_batch_sampler(config, train_subjects, acquisitions, flips="flip" in augment.enabled),
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
        "acquisition": {sid: a.tolist() for sid, a in acquisitions.items()},
    }
