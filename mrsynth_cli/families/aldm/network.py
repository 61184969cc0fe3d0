"""The whole ALDM model one weights file holds: autoencoder, MS-SPADE, latent UNet and the latent scale.

The UNet (paper sec. 3.2-3.3, Table C) is MONAI's time-conditioned ``DiffusionModelUNet`` with
``spatial_dims = 3``. Its input is ``[condition, z_t]`` on channels (Palette): the condition is the
target-like latent ``SPADE(z_src, y)`` (``condition = "spade"``), the source latent (``"source"``,
ablation b) or nothing (``"none"``, ablation a). The target modality enters as a one-hot token ``y``
(B, 1, n_contrasts), the keys and values of the cross-attention layers (eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsynth_cli.families.aldm.config import AldmConfig
from mrsynth_cli.families.aldm.spade import MSSPADE
from mrsynth_cli.families.aldm.vqgan import LatentAutoencoder

__all__ = ["AldmModel", "build_unet"]


def build_unet(config: AldmConfig) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    d = config.ae_latent_channels
    return DiffusionModelUNet(
        spatial_dims=config.spatial_dims,
        in_channels=d if config.condition == "none" else 2 * d,
        out_channels=d,
        num_res_blocks=config.ldm_num_res_blocks,
        channels=config.ldm_channels,
        attention_levels=config.ldm_attention_levels,
        norm_num_groups=config.ldm_norm_num_groups,
        num_head_channels=config.ldm_num_head_channels,
        with_conditioning=True,
        cross_attention_dim=len(config.contrasts),
        use_flash_attention=True,
    )


class AldmModel(nn.Module):
    """Autoencoder + MS-SPADE (+ UNet when ``use_diffusion``) + ``latent_scale`` (1 / std of training latents)."""

    def __init__(self, config: AldmConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = LatentAutoencoder(config)
        self.spade = MSSPADE(config)
        self.unet = build_unet(config) if config.use_diffusion else None
        self.register_buffer("latent_scale", torch.ones(()))

    def one_hot(self, target: Tensor) -> Tensor:
        """The target token ``y`` (B, 1, n_contrasts) for cross-attention."""
        return F.one_hot(target.long(), len(self.config.contrasts)).float()[:, None, :]

    def condition(self, z_src: Tensor, target: Tensor) -> Tensor | None:
        """The scaled Palette condition for source latents ``z_src`` (unscaled) and target indices."""
        if self.config.condition == "none":
            return None
        if self.config.condition == "source":
            return z_src * self.latent_scale
        return self.spade(z_src, target) * self.latent_scale

    def eps(self, z_t: Tensor, t: Tensor, condition: Tensor | None, target: Tensor) -> Tensor:
        """``eps_theta(z^tar_src, z_t, t, y)`` (eq. 4)."""
        x = z_t if condition is None else torch.cat([condition, z_t], dim=1)
        return self.unet(x, timesteps=t, context=self.one_hot(target).to(z_t.dtype))
