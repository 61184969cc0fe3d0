"""``mrsynth train mmdm``: the multi-path Brownian-bridge model on subjects with the target and every input.

1. Subjects are preprocessed onto the model grid (cached); each needs the target and every input.
2. Each step draws 2.5D windows (``slices`` adjacent axial slices centred on a brain slice), mirrors
   them left-right with ``--augment flip``, draws each sample's ``t ~ U{0..T-1}`` and, per path, its
   own noise, builds ``x^m_t`` by eq. 1 with the path's source as ``y`` and minimises eq. 11: the
   hybrid loss (eq. 7) of the cooperative and of every independent prediction, weighted by NAWS
   with each sample's own ``delta_t``.
3. Validation (``--validation-subject``) samples ``validation_windows`` windows per subject with
   ``validation_steps`` bridge steps and reports PSNR/SSIM of the windows and of their axial MIPs
   in the scaled model space.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mmdm.config import MMDMConfig
from mrsynth_cli.families.mmdm.inference import (
    bridge_schedule,
    build_sampler,
    from_bridge,
    synthesize_windows,
    to_bridge,
)
from mrsynth_cli.families.mmdm.losses import hybrid_loss
from mrsynth_cli.families.mmdm.network import MMDMModel
from mrsynth_cli.families.mmdm.windows import extract_windows, training_window_start
from mrsynth_cli.training.augment import AugmentSettings
from mrsynth_cli.training.data import SubjectArrays, load_training_subjects, split_validation
from mrsynth_cli.training.distributed import setup_distributed
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = ["FAMILY", "make_batch_sampler", "make_loss", "validation_metrics", "train_mmdm"]

log = logging.getLogger(__name__)
FAMILY = "mmdm"


def _brain_slices(mask: np.ndarray, min_fraction: float = 0.02) -> np.ndarray:
    area = mask.reshape(-1, mask.shape[2]).mean(0)
    return np.flatnonzero(area > min_fraction)


def make_batch_sampler(config: MMDMConfig, subjects: list[SubjectArrays], flips: bool):
    """A ``sample_batch(rng)`` closure: ``{"target": (B, N, X, Y), "<contrast>": ...}`` windows in [-1, 1]."""
    slices = [_brain_slices(s.brain_mask) for s in subjects]
    wanted = [config.target_contrast, *config.input_contrasts]

    def sample_batch(rng: np.random.Generator) -> dict[str, Tensor]:
        parts: dict[str, list[np.ndarray]] = {str(c): [] for c in wanted}
        for _ in range(config.batch_size):
            index = int(rng.integers(len(subjects)))
            subject = subjects[index]
            start = training_window_start(int(rng.choice(slices[index])), subject.brain_mask.shape[2], config.slices)
            flip = flips and rng.random() < 0.5
            for c in wanted:
                window = extract_windows(subject.volumes[c], [start], config.slices)[0]
                parts[str(c)].append(window[:, ::-1] if flip else window)  # axis 1 of a window: left-right
        return {name: to_bridge(torch.from_numpy(np.ascontiguousarray(np.stack(w)))) for name, w in parts.items()}

    return sample_batch


def make_loss(config: MMDMConfig):
    """``compute_loss(network, batch, generator)``: eq. 1 per path, then eq. 11 (or the plain sum)."""
    schedule = bridge_schedule(config)
    paths = config.path_contrasts

    def compute_loss(network: torch.nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        module = getattr(network, "module", network)
        device = module.weighting.sigma_paths.device
        x0 = batch[str(config.target_contrast)].to(device)
        sources = {c: batch[str(c)].to(device) for c in config.input_contrasts}
        t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=generator)
        states = {}
        for c in paths:
            noise = torch.randn(x0.shape, generator=generator).to(device)
            states[c] = schedule.q_sample(x0, sources[c], t, noise)
        fused, independent = network(states, t.to(device), sources)
        options = {
            "use_mip": config.mip_loss,
            "temperature": config.mip_temperature,
            "generator": generator,
            "gumbel_scale": config.gumbel_scale,
        }
        path_losses = torch.stack([hybrid_loss(independent[c], x0, **options) for c in paths], dim=1)
        fused_loss = hybrid_loss(fused, x0, **options) if module.fusion is not None else None
        delta = schedule.variance_t[t].to(device=device, dtype=x0.dtype)  # each sample's own delta_t
        return module.weighting(fused_loss, path_losses, delta, adaptive=config.noise_adaptive)

    return compute_loss


def validation_metrics(
    model, config: MMDMConfig, subjects: list[SubjectArrays], device: torch.device
) -> dict[str, float]:
    """PSNR/SSIM of sampled windows and of their axial MIPs (scaled model space, inside the brain)."""
    from mrsynth_cli.metrics.image import psnr, ssim

    sampler = build_sampler(config, None, config.validation_steps)
    generator = torch.Generator().manual_seed(0)
    scores: dict[str, list[float]] = {"psnr": [], "mip_psnr": [], "mip_ssim": []}
    for subject in subjects:
        slices = _brain_slices(subject.brain_mask)
        centers = slices[np.linspace(0, len(slices) - 1, config.validation_windows).round().astype(int)]
        starts = [training_window_start(int(z), subject.brain_mask.shape[2], config.slices) for z in centers]
        sources = {
            c: to_bridge(torch.from_numpy(extract_windows(subject.volumes[c], starts, config.slices))).to(device)
            for c in config.input_contrasts
        }
        pred = from_bridge(synthesize_windows(model, config, sources, sampler, generator)).clamp(0, 1).cpu().numpy()
        ref = extract_windows(subject.volumes[config.target_contrast], starts, config.slices)
        mask = extract_windows(subject.brain_mask.astype(np.float32), starts, config.slices) > 0
        scores["psnr"].append(psnr(pred, ref, mask))
        mip_mask = mask.max(1)
        for p, r, m in zip(pred.max(1), ref.max(1), mip_mask, strict=True):
            scores["mip_psnr"].append(psnr(p, r, m))
            scores["mip_ssim"].append(ssim(p, r, m))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def train_mmdm(
    data: list[Path],
    config: MMDMConfig,
    out_dir: Path,
    settings: TrainSettings,
    *,
    validation_subjects: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train an ``mmdm`` model; returns the checkpoint folder and a summary.

    Raises:
        InputError: an augmentation other than flip, or no subject with the target and every input.
    """
    augment = AugmentSettings.parse(settings.augment)
    if set(augment.enabled) - {"flip"}:
        raise InputError("mmdm training supports --augment flip (or none) only", "use --augment flip")
    ctx = setup_distributed(settings.device)
    required = [config.target_contrast, *config.input_contrasts]
    with ctx.main_first():
        subjects = load_training_subjects(
            data,
            required,
            required=required,
            spacing_mm=config.spacing_mm,
            model_shape=config.model_shape,
            cache_dir=cache_dir,
        )
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    log.info(
        "mmdm: training on %s; validating on %s",
        [s.subject_id for s in train_subjects],
        [s.subject_id for s in val_subjects],
    )
    torch.manual_seed(settings.seed)  # network initialisation only; data and noise use passed generators
    model = MMDMModel(config)
    validate = (lambda net: validation_metrics(net, config, val_subjects, ctx.device)) if val_subjects else None
    ckpt = train_loop(
        family=FAMILY,
        config=config.to_dict(),
        network=model,
        sample_batch=make_batch_sampler(config, train_subjects, flips="flip" in augment.enabled),
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
    }
