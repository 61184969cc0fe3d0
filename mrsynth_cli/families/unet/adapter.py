"""``unet`` adapter: the family contract of :mod:`mrsynth_cli.families.base`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.unet.config import UNetConfig
from mrsynth_cli.families.unet.network import build_network, predict_volume
from mrsynth_cli.io.contrasts import Contrast

__all__ = ["config_from_dict", "describe", "preprocess_options", "load_model", "synthesize"]


def config_from_dict(data: dict[str, Any]) -> UNetConfig:
    return UNetConfig.from_dict(data)


def describe(config: UNetConfig) -> dict[str, Any]:
    return {
        "inputs": list(config.inputs),
        "outputs": [config.target],
        "min_inputs": 1,
        "geometry": {"dims": "2D", "spacing_mm": config.spacing_mm, "size": list(config.model_shape), "slice_axis": "axial"},
    }


def preprocess_options(config: UNetConfig) -> dict[str, Any]:
    return {"spacing_mm": config.spacing_mm, "model_shape": tuple(config.model_shape), "segmentation": "none"}


def load_model(config: UNetConfig, weights: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    network = build_network(config)
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(
            "the weights do not fit the unet configuration in the manifest", "re-import the checkpoint with its own config"
        ) from exc
    return network.to(device).eval()


def synthesize(
    model: torch.nn.Module,
    config: UNetConfig,
    prep: Any,
    targets: list[Contrast],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device,
    progress: bool = False,
) -> dict[Contrast, np.ndarray]:
    """Deterministic: sampler, steps and generator do not apply (the adapter accepts them for uniformity)."""
    inputs = {c: v for c, v in prep.model_inputs.items() if c in config.input_contrasts}
    out = predict_volume(model, config, inputs, prep.model_brain_mask, device=device)
    return {targets[0]: out}
