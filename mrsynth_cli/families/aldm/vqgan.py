"""The 3D VQ-GAN autoencoder of ALDM (paper sec. 3.1, supplement Table A) and its vector quantiser.

Encoder and decoder are MONAI's ``AutoencoderKL`` blocks (``spatial_dims`` is a parameter), downsampling
``2 ** (levels - 1)`` = 4 as the paper. Between them sits either

* :class:`VectorQuantizer` (``ae_regularisation = "vq"``, the paper): nearest-codebook lookup with the
  straight-through estimator, commitment loss ``beta |z_e - sg(e)|^2``, and a codebook that trains:
  by exponential moving averages of the encoder outputs assigned to each code (van den Oord et al.
  2017, appendix; ``ae_codebook_update = "ema"``, with dead-code restart) or by the codebook loss
  ``|sg(z_e) - e|^2`` (``"loss"``). The published code sets ``codebook_weight: 0`` so its codebook never
  moves (seed-code-notes 2.3); here it does.
* a diagonal Gaussian (``"kl"``, the paper's Table 3 ablation d), ``z = mu + sigma * n``.

The perceptual (LPIPS) term of the paper is not used: it needs pretrained 2D VGG/AlexNet weights, which
are not available locally (deviation stated in the README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsynth_cli.families.aldm.config import AldmConfig

__all__ = ["VectorQuantizer", "LatentAutoencoder", "build_discriminator"]


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantisation of channel vectors, straight-through gradients.

    Args:
        num_embeddings: codebook size K.
        dim: embedding dimension D (the latent channels).
        commitment: beta of the commitment loss.
        update: ``"ema"`` or ``"loss"`` (see the module docstring).
        decay: EMA decay.
        dead_code_threshold: EMA usage below which a code is restarted (``ema`` only; 0 never).
    """

    def __init__(
        self, num_embeddings: int, dim: int, commitment: float = 0.25, update: str = "ema", decay: float = 0.99,
        dead_code_threshold: float = 0.01, epsilon: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.commitment, self.update, self.decay = commitment, update, decay
        self.dead_code_threshold, self.epsilon = dead_code_threshold, epsilon
        codebook = torch.empty(num_embeddings, dim).uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        self.embedding = nn.Parameter(codebook, requires_grad=update == "loss")
        # Usage starts at 0, so the first EMA step restarts every unused code on an encoder output
        # (a data-dependent initialisation).
        self.register_buffer("ema_cluster_size", torch.zeros(num_embeddings))
        self.register_buffer("ema_embed_sum", torch.zeros(num_embeddings, dim))

    def nearest(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Indices of the nearest codes and the squared distance to them (float32, any autocast)."""
        codebook = self.embedding.detach().float()
        flat = flat.float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]
        best, indices = distances.min(1)
        return indices, best

    def forward(self, z: Tensor, update_codebook: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise ``z`` (B, D, *spatial); returns (quantised z, codebook + commitment loss, indices).

        ``update_codebook=False`` quantises without moving an EMA codebook (SPADE or sampled latents
        must not pull the codes of the autoencoder).
        """
        flat = z.movedim(1, -1).reshape(-1, self.dim)
        indices, error = self.nearest(flat.detach())
        chosen = F.embedding(indices, self.embedding).to(flat.dtype)
        loss = self.commitment * F.mse_loss(flat, chosen.detach())
        if self.update == "loss":
            loss = loss + F.mse_loss(chosen, flat.detach())
        elif self.training and update_codebook:
            self._ema_step(flat.detach().float(), indices, error)
        quantised = flat + (chosen - flat).detach()  # straight-through: d quantised / d z = identity
        shape = (z.shape[0], *z.shape[2:], self.dim)
        return quantised.reshape(shape).movedim(-1, 1), loss, indices.reshape(shape[:-1])

    @torch.no_grad()
    def _ema_step(self, flat: Tensor, indices: Tensor, error: Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.num_embeddings).to(flat.dtype)
        sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat)
        self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.epsilon) / (total + self.num_embeddings * self.epsilon) * total
        self.embedding.data.copy_(self.ema_embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            dead = torch.nonzero(self.ema_cluster_size < self.dead_code_threshold).flatten()
            if len(dead):  # restart on the worst-quantised encoder outputs (deterministic: no RNG needed)
                worst = error.argsort(descending=True)[: len(dead)]
                dead = dead[: len(worst)]
                self.embedding.data[dead] = flat[worst]
                self.ema_embed_sum[dead] = flat[worst]
                self.ema_cluster_size[dead] = 1.0

    def lookup(self, indices: Tensor) -> Tensor:
        return F.embedding(indices, self.embedding).movedim(-1, 1)


class LatentAutoencoder(nn.Module):
    """E, the regulariser and D of ALDM; ``encode`` gives the latents the later stages use."""

    def __init__(self, config: AldmConfig) -> None:
        super().__init__()
        from monai.networks.nets.autoencoderkl import Decoder, Encoder

        self.config = config
        levels = len(config.ae_channels)
        common = dict(
            spatial_dims=config.spatial_dims, channels=config.ae_channels,
            num_res_blocks=(config.ae_num_res_blocks,) * levels,
            norm_num_groups=config.ae_norm_num_groups, norm_eps=1e-6, attention_levels=(False,) * levels,
            with_nonlocal_attn=False,
        )
        d = config.ae_latent_channels
        self.encoder = Encoder(in_channels=1, out_channels=d, **common)
        conv = nn.Conv3d if config.spatial_dims == 3 else nn.Conv2d
        kl = config.ae_regularisation == "kl"
        self.quant_conv = conv(d, 2 * d if kl else d, 1)
        self.post_quant_conv = conv(d, d, 1)
        self.decoder = Decoder(in_channels=d, out_channels=1, **common)
        self.quantizer = None
        if not kl:
            self.quantizer = VectorQuantizer(
                config.ae_num_embeddings, d, config.ae_commitment, config.ae_codebook_update,
                config.ae_codebook_decay, config.ae_dead_code_threshold,
            )

    @property
    def is_vq(self) -> bool:
        return self.quantizer is not None

    def encode_continuous(self, x: Tensor) -> Tensor:
        """``z_e`` (VQ) or ``[mu, log var]`` stacked on channels (KL)."""
        return self.quant_conv(self.encoder(x))

    def regularise(self, h: Tensor, noise: Tensor | None = None, update_codebook: bool = True) -> tuple[Tensor, Tensor]:
        """(latent, regularisation loss): quantised z and codebook+commitment loss, or a KL sample and KL."""
        if self.quantizer is not None:
            z, loss, _ = self.quantizer(h, update_codebook=update_codebook)
            return z, loss
        mu, log_var = h.chunk(2, dim=1)
        log_var = log_var.clamp(-30.0, 20.0)
        z = mu if noise is None else mu + torch.exp(0.5 * log_var) * noise
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).flatten(1).sum(1).mean()
        return z, kl

    def encode(self, x: Tensor) -> Tensor:
        """The latent of ``x`` the SPADE and diffusion stages see: quantised z, or the posterior mean."""
        h = self.encode_continuous(x)
        if self.quantizer is not None:
            return self.quantizer(h, update_codebook=False)[0]
        return h.chunk(2, dim=1)[0]

    def snap(self, z: Tensor) -> Tensor:
        """Latents (e.g. SPADE outputs or samples) onto the codebook without moving it (identity for KL)."""
        return self.quantizer(z, update_codebook=False)[0] if self.quantizer is not None else z

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


def build_discriminator(config: AldmConfig) -> nn.Module:
    """MONAI's patch discriminator on 3D volumes (the paper's patch-based adversarial objective)."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=config.spatial_dims, channels=config.ae_discriminator_channels, in_channels=1,
        num_layers_d=config.ae_discriminator_layers, norm="INSTANCE",
    )
