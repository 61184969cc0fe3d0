"""``cola-diff`` adapter: the family contract of :mod:`mrsynth_cli.families.base`.

One weights file holds the whole model: the noise predictor (``eps.*``), the frozen autoencoder it was
trained with (``autoencoder.*``, whose source file's sha256 is ``autoencoder_sha256`` in the config)
and the latent scale factor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.cola_diff.config import CoLaDiffConfig
from mrsynth_cli.io.contrasts import Contrast

__all__ = ["config_from_dict", "describe", "preprocess_options", "load_model", "synthesize", "distillation_task"]


def config_from_dict(data: dict[str, Any]) -> CoLaDiffConfig:
    return CoLaDiffConfig.from_dict(data)


def describe(config: CoLaDiffConfig) -> dict[str, Any]:
    return {
        "inputs": list(config.inputs),
        "outputs": [config.target],
        "min_inputs": 1,
        "geometry": {
            "dims": "2D",
            "spacing_mm": config.spacing_mm,
            "size": list(config.model_shape),
            "slice_axis": "axial",
            "latent": [config.latent_channels, *config.autoencoder.latent_shape],
        },
    }


def preprocess_options(config: CoLaDiffConfig) -> dict[str, Any]:
    segmentation = config.segmentation if config.active_guidance_maps else "none"
    return {"spacing_mm": config.spacing_mm, "model_shape": tuple(config.model_shape), "segmentation": segmentation}


def load_model(config: CoLaDiffConfig, weights: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    from mrsynth_cli.families.cola_diff.network import CoLaDiffModel

    model = CoLaDiffModel(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(
            "the weights do not fit the cola-diff configuration in the manifest",
            "re-import the checkpoint with its own config",
        ) from exc
    return model.to(device).eval()


def synthesize(
    model: torch.nn.Module,
    config: CoLaDiffConfig,
    prep: Any,
    targets: list[Contrast],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device,
    progress: bool = False,
) -> dict[Contrast, np.ndarray]:
    """One sample of the target (``--samples N`` calls this N times with the same generator)."""
    from mrsynth_cli.families.cola_diff.inference import build_sampler, synthesize_volume

    inputs = {c: v for c, v in prep.model_inputs.items() if c in config.input_contrasts}
    guidance = None
    if config.active_guidance_maps:
        if prep.tissues is None:
            raise InputError(
                "this cola-diff model needs tissue masks but segmentation was off", "use --segmentation auto"
            )
        from mrsynth_cli.preprocessing.tissue_maps import model_space_tissue_maps

        guidance = model_space_tissue_maps(prep.tissues, prep.record, prep.model_brain_mask)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = synthesize_volume(
        model,
        config,
        inputs,
        prep.model_brain_mask,
        guidance,
        sampler=build_sampler(config, sampler, steps),
        generator=generator,
        device=device,
        progress=progress,
    )
    return {targets[0]: out}


def distillation_task(source, data, **options):
    """Optional contract function: the family's side of ``mrsynth train distill`` (see :mod:`mrsynth_cli.distill.task`)."""
    from mrsynth_cli.families.cola_diff.distill import distillation_task as build

    return build(source, data, **options)
