"""The ``unet`` network and its slice-wise inference on a model-space volume."""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import UNet

from mrsynth_cli.devices import map_batches
from mrsynth_cli.families.unet.config import UNetConfig
from mrsynth_cli.io.contrasts import Contrast

__all__ = ["build_network", "stack_inputs", "predict_volume"]


def build_network(config: UNetConfig) -> torch.nn.Module:
    """MONAI ``UNet`` with residual units, ``in_channels = 2 × inputs`` (values + presence flags)."""
    return UNet(
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        out_channels=1,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        norm="INSTANCE",
    )


def stack_inputs(config: UNetConfig, volumes: dict[Contrast, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Channels-first array (2 × inputs, *shape): each input's values then its presence flag."""
    channels = []
    for contrast in config.input_contrasts:
        present = contrast in volumes
        channels.append(volumes[contrast] if present else np.zeros(shape, np.float32))
        channels.append(np.full(shape, 1.0 if present else 0.0, np.float32))
    return np.stack(channels).astype(np.float32)


@torch.no_grad()
def predict_volume(
    network: torch.nn.Module,
    config: UNetConfig,
    volumes: dict[Contrast, np.ndarray],
    brain_mask: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 8,
) -> np.ndarray:
    """Predict the target for every axial slice (last axis) of a model-space volume.

    Slices without brain are skipped (left at 0); values are clamped to [0, 1], the scaled range.
    """
    shape = brain_mask.shape
    stacked = stack_inputs(config, volumes, shape)
    output = np.zeros(shape, np.float32)
    slices = [z for z in range(shape[2]) if brain_mask[..., z].any()]
    network.eval()

    def run(chunk: list[int]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack([stacked[..., z] for z in chunk])).to(device)
        return list(network(batch).clamp_(0.0, 1.0).float().cpu().numpy()[:, 0])

    for z, pred in zip(slices, map_batches(run, slices, batch_size), strict=True):
        output[..., z] = pred
    return np.where(brain_mask, output, 0.0).astype(np.float32)
