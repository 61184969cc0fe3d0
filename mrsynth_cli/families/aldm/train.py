"""``mrsynth train aldm --stage vqgan|spade|ldm``: the three training stages of ALDM.

1. ``vqgan`` (paper Fig. 3a): the 3D autoencoder on whole volumes, with L1 reconstruction, the
   quantisation (codebook + commitment) or KL term, the 3D patch-adversarial term (least squares, MONAI
   ``PatchDiscriminator``, weight ``ae_adversarial_weight``; 0 switches it off) and, with
   ``ae_cycle_weight > 0``, translation and cycle consistency through the SPADE path:
   ``x_s -> E -> SPADE(., t) -> D ~ x_t`` and back ``-> E -> SPADE(., s) -> D ~ x_s`` (MS-SPADE trains
   with it). Each step draws one subject and an ordered pair (source != target) of its contrasts.
   The shared loop has one optimiser, so the discriminator's and generator's terms are made to touch
   only their own side (detached discriminator weights for the generator term, a detached
   reconstruction for the discriminator term).
2. ``spade`` (Fig. 2a): the autoencoder is frozen; every training volume is encoded once (both
   left-right orientations with ``--augment flip``) and MS-SPADE is trained on
   ``|SPADE(z_src, t) - z_tar|_1`` in latent space.
3. ``ldm`` (Fig. 2b/3b, eq. 4): autoencoder and MS-SPADE are frozen; the UNet learns
   ``|eps - eps_theta([z^tar_src, z_t], t, y)|^2`` on scaled target latents. Its checkpoint (family
   ``aldm``) holds everything, so ``mrsynth weights import`` takes it and synthesis needs only it.

Every stage resumes with ``--resume`` (the shared loop's checkpoint, optimiser, RNG and step).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.aldm.config import STAGES, AldmConfig
from mrsynth_cli.families.aldm.network import AldmModel
from mrsynth_cli.families.aldm.spade import MSSPADE
from mrsynth_cli.families.aldm.vqgan import LatentAutoencoder, build_discriminator
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.training.augment import AugmentSettings
from mrsynth_cli.training.data import SubjectArrays, load_training_subjects, split_validation
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = [
    "VQGANTrainer", "SpadeTrainer", "vqgan_loss", "spade_loss", "make_ldm_loss", "load_stage_checkpoint",
    "resolve_against", "train_aldm",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- data


def _pairs(subject: SubjectArrays, config: AldmConfig) -> list[Contrast]:
    return [c for c in config.contrast_list if c in subject.volumes]


def make_pair_sampler(config: AldmConfig, subjects: list[SubjectArrays], flip: bool):
    """``sample_batch(rng)``: one whole volume pair ``(x_src, x_tar)`` of one subject, source != target."""
    present = [_pairs(s, config) for s in subjects]

    def sample_batch(rng: np.random.Generator) -> dict[str, Any]:
        i = int(rng.integers(len(subjects)))
        src, tar = rng.choice(len(present[i]), size=2, replace=False)
        flipped = flip and bool(rng.integers(2))
        vols = []
        for c in (present[i][src], present[i][tar]):
            v = subjects[i].volumes[c]
            vols.append(torch.from_numpy(np.ascontiguousarray(v[::-1] if flipped else v, dtype=np.float32))[None, None])
        return {
            "x_src": vols[0], "x_tar": vols[1],
            "src": torch.tensor([config.target_index(present[i][src])]),
            "tar": torch.tensor([config.target_index(present[i][tar])]),
        }

    return sample_batch


@torch.no_grad()
def encode_subjects(
    autoencoder: LatentAutoencoder, config: AldmConfig, subjects: list[SubjectArrays], device: torch.device, flip: bool
) -> list[dict[tuple[int, bool], Tensor]]:
    """Latents of every training volume (per subject: (contrast index, flipped) -> (1, D, *latent))."""
    autoencoder.eval()
    out = []
    for subject in subjects:
        latents = {}
        for c in _pairs(subject, config):
            for flipped in (False, True) if flip else (False,):
                v = subject.volumes[c][::-1] if flipped else subject.volumes[c]
                x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None, None].to(device)
                latents[(config.target_index(c), flipped)] = autoencoder.encode(x).cpu()
        out.append(latents)
    return out


def make_latent_sampler(latents: list[dict[tuple[int, bool], Tensor]], flip: bool):
    """``sample_batch(rng)`` over cached latents: one subject, an ordered pair of its contrasts."""
    contrasts = [sorted({k[0] for k in s}) for s in latents]

    def sample_batch(rng: np.random.Generator) -> dict[str, Tensor]:
        i = int(rng.integers(len(latents)))
        src, tar = rng.choice(contrasts[i], size=2, replace=False)
        flipped = flip and bool(rng.integers(2))
        return {
            "z_src": latents[i][(int(src), flipped)], "z_tar": latents[i][(int(tar), flipped)],
            "src": torch.tensor([int(src)]), "tar": torch.tensor([int(tar)]),
        }

    return sample_batch


# ----------------------------------------------------------------------------------------- stage 1


class VQGANTrainer(nn.Module):
    """What the loop trains in the vqgan stage: autoencoder, MS-SPADE, optional discriminator, step counter."""

    def __init__(self, config: AldmConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = LatentAutoencoder(config)
        self.spade = MSSPADE(config)
        self.discriminator = build_discriminator(config) if config.ae_adversarial_weight > 0 else None
        self.register_buffer("step", torch.zeros((), dtype=torch.long))


def _logits(discriminator: nn.Module, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
    if params is None:
        return discriminator(x)[-1]
    return torch.func.functional_call(discriminator, params, (x,))[-1]


def vqgan_loss(network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
    """Stage-1 loss (see the module docstring); ``network`` is a :class:`VQGANTrainer`."""
    trainer = getattr(network, "module", network)
    config, ae = trainer.config, trainer.autoencoder
    device = trainer.step.device
    x_src, x_tar = batch["x_src"].to(device), batch["x_tar"].to(device)
    src, tar = batch["src"].to(device), batch["tar"].to(device)
    h = ae.encode_continuous(x_src)
    noise = None
    if not ae.is_vq:
        noise = torch.randn((h.shape[0], h.shape[1] // 2, *h.shape[2:]), generator=generator).to(device)
    z_src, reg = ae.regularise(h, noise)
    recon = ae.decode(z_src)
    loss = (recon - x_src).abs().mean() + (config.ae_kl_weight * reg if not ae.is_vq else reg)
    if config.ae_cycle_weight > 0:
        translated = ae.decode(ae.snap(trainer.spade(z_src, tar)))
        z_back = ae.encode(translated)
        cycled = ae.decode(ae.snap(trainer.spade(z_back, src)))
        cycle = (translated - x_tar).abs().mean() + (cycled - x_src).abs().mean()
        loss = loss + config.ae_cycle_weight * cycle
    if trainer.discriminator is not None and int(trainer.step) >= config.ae_adversarial_start:
        frozen = {k: v.detach() for k, v in trainer.discriminator.named_parameters()}
        frozen.update(dict(trainer.discriminator.named_buffers()))
        generator_term = (_logits(trainer.discriminator, recon, frozen) - 1.0).pow(2).mean()
        real = _logits(trainer.discriminator, x_src)
        fake = _logits(trainer.discriminator, recon.detach())
        discriminator_term = 0.5 * (real - 1.0).pow(2).mean() + 0.5 * fake.pow(2).mean()
        loss = loss + config.ae_adversarial_weight * generator_term + discriminator_term
    trainer.step += 1
    return loss


# ----------------------------------------------------------------------------------------- stage 2


class SpadeTrainer(nn.Module):
    """The spade stage's network: the frozen autoencoder (saved along) and the trained MS-SPADE."""

    def __init__(self, config: AldmConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = LatentAutoencoder(config)
        self.spade = MSSPADE(config)
        self.autoencoder.requires_grad_(False)


def spade_loss(network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
    """``|SPADE(z_src, t) - z_tar|_1`` on cached (quantised) latents."""
    trainer = getattr(network, "module", network)
    device = next(trainer.spade.parameters()).device
    out = trainer.spade(batch["z_src"].to(device), batch["tar"].to(device))
    return (out - batch["z_tar"].to(device)).abs().mean()


# ----------------------------------------------------------------------------------------- stage 3


def make_ldm_loss(config: AldmConfig):
    """``compute_loss``: eq. 4 with t ~ U{0..T-1} and the noise from the loop's generator."""
    from mrsynth_cli.families.aldm.inference import noise_schedule

    schedule = noise_schedule(config)

    def compute_loss(network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        model = getattr(network, "module", network)
        device = model.latent_scale.device
        z_src, tar = batch["z_src"].to(device), batch["tar"].to(device)
        x0 = batch["z_tar"].to(device) * model.latent_scale
        with torch.no_grad():
            condition = model.condition(z_src, tar)
        t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = schedule.q_sample(x0, t, noise).to(x0.dtype)
        return F.mse_loss(model.eps(x_t, t.to(device), condition, tar), noise)

    return compute_loss


# ----------------------------------------------------------------------------------------- wiring


def load_stage_checkpoint(checkpoint: Path, stage: str) -> tuple[AldmConfig, dict[str, Tensor]]:
    """Config and weights of the checkpoint a stage starts from (``vqgan`` for spade, ``spade`` for ldm).

    Raises:
        InputError: not a checkpoint of that stage.
    """
    from mrsynth_cli.training.checkpoint import WEIGHTS_FILE, load_weights, read_checkpoint_config

    info = read_checkpoint_config(checkpoint)
    if info.family != STAGES[stage]:
        option = "--autoencoder" if stage == "vqgan" else "--spade"
        raise InputError(
            f"{info.path} is a '{info.family}' checkpoint, not an aldm {stage} stage ({STAGES[stage]})",
            f"give {option} the checkpoint folder of: mrsynth train aldm --stage {stage}",
        )
    return AldmConfig.from_dict(info.config), load_weights(info.path / WEIGHTS_FILE)


def resolve_against(config: AldmConfig, earlier: AldmConfig) -> AldmConfig:
    """``config`` with the autoencoder, MS-SPADE and grid of the earlier stage (they are frozen now).

    Raises:
        InputError: ``config`` asks for another regularisation than the autoencoder was trained with.
    """
    if config.ae_regularisation != earlier.ae_regularisation:
        raise InputError(
            f"the autoencoder was trained with {earlier.ae_regularisation} latents, not {config.ae_regularisation}",
            "pass --ablate kl to --stage vqgan (it is an autoencoder ablation) and chain from that run",
        )
    return AldmConfig.from_dict({**config.to_dict(), **earlier.autoencoder_dict()})


def _part(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _load_part(module: nn.Module, weights: dict[str, Tensor], prefix: str, source: Path) -> None:
    try:
        module.load_state_dict(_part(weights, prefix), strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"the weights in {source} do not fit its config ({prefix[:-1]})", "re-train that stage"
        ) from exc


def _validation_vqgan(config: AldmConfig, subjects: list[SubjectArrays], device: torch.device):
    from mrsynth_cli.metrics.image import psnr

    def validate(net: nn.Module) -> dict[str, float]:
        scores = []
        with torch.no_grad():
            for s in subjects:
                for c in _pairs(s, config):
                    x = torch.from_numpy(s.volumes[c].astype(np.float32))[None, None].to(device)
                    r = net.autoencoder.decode(net.autoencoder.encode(x)).clamp(0, 1)[0, 0].cpu().numpy()
                    scores.append(psnr(r, s.volumes[c], s.brain_mask))
        return {"recon_psnr": float(np.mean(scores))}

    return validate


def _validation_ldm(config: AldmConfig, subjects: list[SubjectArrays], device: torch.device):
    from mrsynth_cli.families.aldm.inference import build_sampler, translate
    from mrsynth_cli.metrics.image import psnr

    def validate(net: nn.Module) -> dict[str, float]:
        scores = []
        generator = torch.Generator().manual_seed(0)
        for s in subjects:
            present = _pairs(s, config)
            source, targets = present[0], present[1:]
            out = translate(net, config, s.volumes[source], targets, sampler=build_sampler(config, "ddim", 10),
                            generator=generator, device=device)
            scores += [psnr(out[t], s.volumes[t], s.brain_mask) for t in targets]
        return {"psnr": float(np.mean(scores))}

    return validate


def train_aldm(
    stage: str,
    data: list[Path],
    config: AldmConfig,
    out_dir: Path,
    settings: TrainSettings,
    *,
    previous: Path | None = None,
    validation_subjects: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train one stage; ``previous`` is the vqgan checkpoint (for spade) or the spade checkpoint (for ldm).

    Raises:
        InputError: unknown stage, missing/wrong earlier checkpoint, bad augmentation or subjects.
    """
    from mrsynth_cli.devices import resolve_device

    if stage not in STAGES:
        raise InputError(f"unknown aldm stage '{stage}'", f"use one of {', '.join(STAGES)}")
    augment = AugmentSettings.parse(settings.augment)
    if set(augment.enabled) - {"flip"}:
        raise InputError(
            "aldm trains on whole volumes and cached latents: only --augment flip (or none)", "use --augment flip"
        )
    flip = "flip" in augment.enabled
    earlier_weights: dict[str, Tensor] = {}
    if stage != "vqgan":
        if previous is None:
            option = "--autoencoder" if stage == "spade" else "--spade"
            raise InputError(f"--stage {stage} needs the earlier stage's checkpoint", f"pass {option} RUN/checkpoint")
        earlier_config, earlier_weights = load_stage_checkpoint(previous, "vqgan" if stage == "spade" else "spade")
        config = resolve_against(config, earlier_config)
    device = resolve_device(settings.device)
    subjects = load_training_subjects(
        data, config.contrast_list, required=[], spacing_mm=config.spacing_mm, model_shape=config.model_shape,
        cache_dir=cache_dir,
    )
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    log.info("aldm %s: training on %s", stage, [s.subject_id for s in train_subjects])
    torch.manual_seed(settings.seed)  # network initialisation only; data and noise use passed generators
    summary: dict[str, Any] = {"train_subjects": [s.subject_id for s in train_subjects],
                               "validation_subjects": [s.subject_id for s in val_subjects]}
    validate = None
    if stage == "vqgan":
        network: nn.Module = VQGANTrainer(config)
        sample_batch = make_pair_sampler(config, train_subjects, flip)
        compute_loss = vqgan_loss
        if val_subjects:
            validate = _validation_vqgan(config, val_subjects, device)
    else:
        network = SpadeTrainer(config) if stage == "spade" else AldmModel(config)
        _load_part(network.autoencoder, earlier_weights, "autoencoder.", previous)
        _load_part(network.spade, earlier_weights, "spade.", previous)
        network.autoencoder.requires_grad_(False)
        network.to(device)
        latents = encode_subjects(network.autoencoder, config, train_subjects, device, flip)
        sample_batch = make_latent_sampler(latents, flip)
        if stage == "spade":
            compute_loss = spade_loss
        else:
            network.spade.requires_grad_(False)
            everything = torch.cat([t.flatten() for s in latents for t in s.values()])
            scale = float(1.0 / everything.std().clamp_min(1e-6))
            network.latent_scale.fill_(scale)
            summary["latent_scale"] = scale
            log.info("latent scale factor %.4f", scale)
            compute_loss = make_ldm_loss(config)
            if val_subjects:
                validate = _validation_ldm(config, val_subjects, device)
            if not config.use_diffusion:
                return _save_without_diffusion(network, config, out_dir, settings), summary
    ckpt = train_loop(
        family=STAGES[stage], config=config.to_dict(), network=network, sample_batch=sample_batch,
        compute_loss=compute_loss, out_dir=out_dir, settings=settings, validate=validate, resume=resume,
        progress=progress,
    )
    return ckpt, summary


def _save_without_diffusion(model: AldmModel, config: AldmConfig, out_dir: Path, settings: TrainSettings) -> Path:
    """The SPADE-only ablation (Table 3 c) has nothing left to train: its model is the spade stage's."""
    from mrsynth_cli.training.checkpoint import save_checkpoint

    ckpt = Path(out_dir) / "checkpoint"
    save_checkpoint(ckpt, family=STAGES["ldm"], config=config.to_dict(), weights=model.state_dict(), train_state=None,
                    step=0, training={**asdict(settings), "final": True, "note": "SPADE-only ablation: no diffusion"})
    return ckpt
