"""``mmdm`` adapter: the family contract of :mod:`mrsynth_cli.families.base`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mmdm.config import MMDMConfig
from mrsynth_cli.io.contrasts import Contrast

__all__ = ["config_from_dict", "describe", "preprocess_options", "load_model", "synthesize"]


def config_from_dict(data: dict[str, Any]) -> MMDMConfig:
    return MMDMConfig.from_dict(data)


def describe(config: MMDMConfig) -> dict[str, Any]:
    """``min_inputs`` is 1 for the multi-path model: with sources missing it falls back to the
    mean of the available paths (see :func:`~mrsynth_cli.families.mmdm.inference.synthesize_volume`)."""
    return {
        "inputs": list(config.inputs),
        "outputs": [config.target],
        "min_inputs": 1 if config.variant != "concat" else len(config.inputs),
        "geometry": {
            "dims": "2.5D",
            "spacing_mm": config.spacing_mm,
            "size": list(config.model_shape),
            "slice_axis": "axial",
            "slices": config.slices,
        },
    }


def preprocess_options(config: MMDMConfig) -> dict[str, Any]:
    return {"spacing_mm": config.spacing_mm, "model_shape": tuple(config.model_shape), "segmentation": "none"}


def load_model(config: MMDMConfig, weights: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    from mrsynth_cli.families.mmdm.network import MMDMModel

    model = MMDMModel(config)
    try:
        model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    except RuntimeError as exc:
        raise InputError(
            "the weights do not fit the mmdm configuration in the manifest",
            "re-import the checkpoint with its own config",
        ) from exc
    return model.to(device).eval()


def synthesize(
    model: torch.nn.Module,
    config: MMDMConfig,
    prep: Any,
    targets: list[Contrast],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device,
    progress: bool = False,
) -> dict[Contrast, np.ndarray]:
    """One sample of the target by the reverse bridge (``--steps`` bridge steps; default: the config's)."""
    from mrsynth_cli.families.mmdm.inference import build_sampler, synthesize_volume

    inputs = {c: v for c, v in prep.model_inputs.items() if c in config.input_contrasts}
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = synthesize_volume(
        model,
        config,
        inputs,
        prep.model_brain_mask,
        sampler=build_sampler(config, sampler, steps),
        generator=generator,
        device=device,
        progress=progress,
    )
    return {targets[0]: out}
