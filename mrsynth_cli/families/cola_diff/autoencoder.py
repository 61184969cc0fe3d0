"""``mrsynth train autoencoder``: the KL autoencoder E/D CoLa-Diff diffuses in, trained on every contrast.

Loss (Rombach et al. 2022, "KL-reg"): ``|x - D(z)|_1 + kl_weight * KL(q(z|x) || N(0, I))`` with
``z = mu + sigma * n`` (``n`` drawn from the loop's generator), plus, when ``adversarial_weight > 0``
and from step ``adversarial_start`` on, a least-squares patch-adversarial term against MONAI's
``PatchDiscriminator``. The shared loop has one optimiser, so the generator and discriminator terms
are made to touch only their own side: the generator's adversarial term is computed with detached
discriminator weights (``torch.func.functional_call``), the discriminator's on a detached
reconstruction; their sum is minimised in one step. Each step draws random axial brain slices of a
random contrast of a random training subject; the validation reports reconstruction PSNR and SSIM.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.cola_diff.config import AUTOENCODER_FAMILY, AutoencoderConfig
from mrsynth_cli.families.cola_diff.data import brain_slices
from mrsynth_cli.families.cola_diff.network import build_autoencoder
from mrsynth_cli.training.augment import AugmentSettings, augment_sample
from mrsynth_cli.training.data import SubjectArrays, load_training_subjects, split_validation
from mrsynth_cli.training.distributed import setup_distributed
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = [
    "AutoencoderTrainer",
    "autoencoder_loss",
    "reconstruct_volume",
    "reconstruction_metrics",
    "train_autoencoder",
    "load_autoencoder_checkpoint",
]

log = logging.getLogger(__name__)
AE_AUGMENTATIONS = ("flip", "affine")


class AutoencoderTrainer(nn.Module):
    """What the loop trains: the autoencoder, the optional discriminator and a step counter (a buffer, so
    that ``--resume`` knows when the adversarial term starts)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = build_autoencoder(config)
        self.discriminator = None
        if config.adversarial_weight > 0:
            from monai.networks.nets import PatchDiscriminator

            self.discriminator = PatchDiscriminator(
                spatial_dims=config.spatial_dims,
                channels=config.discriminator_channels,
                in_channels=1,
                num_layers_d=config.discriminator_layers,
                norm="INSTANCE",
            )
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z_mu, z_sigma = self.autoencoder.encode(x)
        return self.autoencoder.decode(z_mu + z_sigma * noise), z_mu, z_sigma

    def latent_noise_shape(self, x: Tensor) -> tuple[int, ...]:
        f = self.config.downsample
        return (x.shape[0], self.config.latent_channels, x.shape[2] // f, x.shape[3] // f)


def _logits(discriminator: nn.Module, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
    if params is None:
        return discriminator(x)[-1]
    return torch.func.functional_call(discriminator, params, (x,))[-1]


def autoencoder_loss(network: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
    """L1 + KL (+ least-squares adversarial terms); ``network`` is an :class:`AutoencoderTrainer` (or DDP of one)."""
    trainer = getattr(network, "module", network)
    config = trainer.config
    device = trainer.step.device
    x = batch["x"].to(device)
    noise = torch.randn(trainer.latent_noise_shape(x), generator=generator).to(device)
    recon, z_mu, z_sigma = network(x, noise)
    l1 = (recon - x).abs().mean()
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0).flatten(1).sum(1).mean()
    loss = l1 + config.kl_weight * kl
    if trainer.discriminator is not None and int(trainer.step) >= config.adversarial_start:
        frozen = {k: v.detach() for k, v in trainer.discriminator.named_parameters()}
        frozen.update(dict(trainer.discriminator.named_buffers()))
        generator_term = (_logits(trainer.discriminator, recon, frozen) - 1.0).pow(2).mean()
        real = _logits(trainer.discriminator, x)
        fake = _logits(trainer.discriminator, recon.detach())
        discriminator_term = 0.5 * (real - 1.0).pow(2).mean() + 0.5 * fake.pow(2).mean()
        loss = loss + config.adversarial_weight * generator_term + discriminator_term
    trainer.step += 1
    return loss


def make_batch_sampler(config: AutoencoderConfig, subjects: list[SubjectArrays], augment: AugmentSettings):
    """A ``sample_batch(rng)`` closure of random brain slices of random contrasts (geometric augmentation)."""
    slices = [brain_slices(s.brain_mask) for s in subjects]
    contrasts = [[c for c in config.contrast_list if c in s.volumes] for s in subjects]

    def sample_batch(rng: np.random.Generator) -> dict[str, Tensor]:
        xs = []
        for _ in range(config.batch_size):
            index = int(rng.integers(len(subjects)))
            subject = subjects[index]
            contrast = contrasts[index][int(rng.integers(len(contrasts[index])))]
            z = int(rng.choice(slices[index]))
            _, (image,), _ = augment_sample(
                [], [subject.volumes[contrast][..., z]], subject.brain_mask[..., z], rng, augment
            )
            xs.append(image[None])
        return {"x": torch.from_numpy(np.stack(xs))}

    return sample_batch


@torch.no_grad()
def reconstruct_volume(
    autoencoder: nn.Module, volume: np.ndarray, brain_mask: np.ndarray, device: torch.device, batch_size: int = 16
) -> np.ndarray:
    """Encode (posterior mean) and decode every brain slice of a model-space volume; clamped to [0, 1]."""
    from mrsynth_cli.devices import map_batches

    autoencoder.eval()
    slices = list(brain_slices(brain_mask, 0.0))
    out = np.zeros_like(volume, dtype=np.float32)

    def run(chunk: list[int]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack([volume[..., z] for z in chunk]).astype(np.float32))[:, None].to(device)
        z_mu, _ = autoencoder.encode(batch)
        return list(autoencoder.decode(z_mu).clamp(0.0, 1.0).float().cpu().numpy()[:, 0])

    for z, image in zip(slices, map_batches(run, slices, batch_size), strict=True):
        out[..., z] = image
    return np.where(brain_mask, out, 0.0).astype(np.float32)


def reconstruction_metrics(
    autoencoder: nn.Module, config: AutoencoderConfig, subjects: list[SubjectArrays], device: torch.device
) -> dict[str, float]:
    """Reconstruction PSNR and SSIM (3D, inside the brain, scaled [0, 1] model space), mean and per contrast."""
    from mrsynth_cli.metrics.image import psnr, ssim3d

    scores: dict[str, list[float]] = {}
    for subject in subjects:
        for contrast in config.contrast_list:
            if contrast not in subject.volumes:
                continue
            ref = subject.volumes[contrast]
            recon = reconstruct_volume(autoencoder, ref, subject.brain_mask, device)
            scores.setdefault(f"psnr_{contrast}", []).append(psnr(recon, ref, subject.brain_mask))
            scores.setdefault(f"ssim_{contrast}", []).append(ssim3d(recon, ref, subject.brain_mask))
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    out["psnr"] = float(np.mean([v for k, v in out.items() if k.startswith("psnr_")]))
    out["ssim"] = float(np.mean([v for k, v in out.items() if k.startswith("ssim_")]))
    return out


def load_autoencoder_checkpoint(checkpoint: Path) -> tuple[AutoencoderConfig, dict[str, Tensor], str]:
    """Config, autoencoder state dict and weights sha256 of a ``mrsynth train autoencoder`` checkpoint.

    Raises:
        InputError: not an autoencoder checkpoint, or weights that do not fit its config.
    """
    from mrsynth_cli.training.checkpoint import WEIGHTS_FILE, load_weights, read_checkpoint_config
    from mrsynth_cli.weights.store import sha256_of

    info = read_checkpoint_config(checkpoint)
    if info.family != AUTOENCODER_FAMILY:
        raise InputError(
            f"{info.path} is a '{info.family}' checkpoint, not a cola-diff autoencoder",
            "give the checkpoint folder written by: mrsynth train autoencoder",
        )
    config = AutoencoderConfig.from_dict(info.config)
    path = info.path / WEIGHTS_FILE
    weights = load_weights(path)
    prefix = "autoencoder."
    state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        build_autoencoder(config).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"the weights in {path} do not fit its autoencoder config", "re-train the autoencoder"
        ) from exc
    return config, state, sha256_of(path)


def train_autoencoder(
    data: list[Path],
    config: AutoencoderConfig,
    out_dir: Path,
    settings: TrainSettings,
    *,
    validation_subjects: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train the shared autoencoder; returns the checkpoint folder and a summary (subjects)."""
    augment = AugmentSettings.parse(settings.augment)
    extra = [a for a in augment.enabled if a not in AE_AUGMENTATIONS]
    if extra:
        raise InputError(
            f"--augment {','.join(extra)} does not apply to the autoencoder (input = target)",
            f"use none or a subset of {', '.join(AE_AUGMENTATIONS)}",
        )
    ctx = setup_distributed(settings.device)
    with ctx.main_first():
        subjects = load_training_subjects(
            data,
            config.contrast_list,
            required=[],
            spacing_mm=config.spacing_mm,
            model_shape=config.model_shape,
            cache_dir=cache_dir,
        )
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    log.info("autoencoder: training on %s", [s.subject_id for s in train_subjects])
    torch.manual_seed(settings.seed)
    network = AutoencoderTrainer(config)

    def validate(net: nn.Module) -> dict[str, float]:
        return reconstruction_metrics(net.autoencoder, config, val_subjects, ctx.device)

    ckpt = train_loop(
        family=AUTOENCODER_FAMILY,
        config=config.to_dict(),
        network=network,
        sample_batch=make_batch_sampler(config, train_subjects, augment),
        compute_loss=autoencoder_loss,
        out_dir=out_dir,
        settings=settings,
        validate=validate if val_subjects else None,
        resume=resume,
        progress=progress,
        distributed=ctx,
    )
    ctx.close()
    return ckpt, {
        "train_subjects": [s.subject_id for s in train_subjects],
        "validation_subjects": [s.subject_id for s in val_subjects],
    }
