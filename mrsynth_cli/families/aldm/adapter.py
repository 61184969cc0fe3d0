"""``aldm`` adapter: the family contract of :mod:`mrsynth_cli.families.base`.

One weights file holds the whole model (``autoencoder.*``, ``spade.*``, ``unet.*``, ``latent_scale``).
One model serves every source -> target pair among its contrasts: the source is the first ``--in``
contrast the model knows that is not asked for (ALDM translates from one source, paper sec. 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.aldm.config import AldmConfig
from mrsynth_cli.io.contrasts import Contrast

__all__ = ["config_from_dict", "describe", "preprocess_options", "load_model", "synthesize", "choose_source"]


def config_from_dict(data: dict[str, Any]) -> AldmConfig:
    return AldmConfig.from_dict(data)


def describe(config: AldmConfig) -> dict[str, Any]:
    return {
        "inputs": list(config.contrasts),
        "outputs": list(config.contrasts),
        "min_inputs": 1,
        "geometry": {
            "dims": "3D",
            "spacing_mm": config.spacing_mm,
            "size": list(config.model_shape),
            "latent": [config.ae_latent_channels, *config.latent_shape],
        },
    }


def preprocess_options(config: AldmConfig) -> dict[str, Any]:
    return {"spacing_mm": config.spacing_mm, "model_shape": tuple(config.model_shape), "segmentation": "none"}


def load_model(config: AldmConfig, weights: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    from mrsynth_cli.families.aldm.network import AldmModel

    model = AldmModel(config)
    try:
        model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    except RuntimeError as exc:
        raise InputError(
            "the weights do not fit the aldm configuration in the manifest",
            "re-import the checkpoint with its own config",
        ) from exc
    return model.to(device).eval()


def choose_source(config: AldmConfig, available: list[Contrast], targets: list[Contrast]) -> Contrast:
    """The source contrast: the first available one the model knows that is not a target."""
    for contrast in available:
        if contrast.value in config.contrasts and contrast not in targets:
            return contrast
    raise InputError(
        f"none of the inputs ({', '.join(map(str, available))}) can be an aldm source for "
        f"{', '.join(map(str, targets))}",
        f"give one of {', '.join(config.contrasts)} that is not a --target",
    )


def synthesize(
    model: torch.nn.Module,
    config: AldmConfig,
    prep: Any,
    targets: list[Contrast],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device,
    progress: bool = False,
) -> dict[Contrast, np.ndarray]:
    """One sample of every target from one source, on the model grid, zero outside the brain."""
    from mrsynth_cli.families.aldm.inference import build_sampler, translate

    source = choose_source(config, list(prep.model_inputs), targets)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = translate(
        model, config, prep.model_inputs[source], targets, sampler=build_sampler(config, sampler, steps),
        generator=generator, device=device, progress=progress,
    )
    mask = prep.model_brain_mask
    return {t: np.where(mask, v, 0.0).astype(np.float32) for t, v in out.items()}
