"""``mrdiff`` adapter: the family contract of :mod:`mrsynth_cli.families.base`, plus acquisition parameters.

MRDiff also needs each input's TR/TE (and TI): the pipeline calls :func:`resolve_acquisition` before
preprocessing (flags, else sidecars, else an error) and passes the result to :func:`synthesize`; the
values go into the output's provenance sidecar (:func:`acquisition_record`). The paper's generator
never reads them (only the training-time condition decoder does), so synthesis uses them to warn
when an input's protocol is far from the training protocol (``training_acquisition``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mrdiff.config import MRDiffConfig
from mrsynth_cli.families.mrdiff.physics import (
    HOW_TO_SUPPLY,
    acquisition_record,
    acquisition_tensor,
    protocol_mismatches,
)
from mrsynth_cli.families.mrdiff.physics import resolve_acquisition as _resolve
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.subjects import Acquisition

__all__ = [
    "config_from_dict",
    "describe",
    "preprocess_options",
    "load_model",
    "synthesize",
    "resolve_acquisition",
    "acquisition_record",
]

log = logging.getLogger(__name__)


def config_from_dict(data: dict[str, Any]) -> MRDiffConfig:
    return MRDiffConfig.from_dict(data)


def describe(config: MRDiffConfig) -> dict[str, Any]:
    return {
        "inputs": list(config.inputs),
        "outputs": [config.target],
        "min_inputs": len(config.inputs),  # the physics module models every condition
        "geometry": {"dims": "2D", "spacing_mm": config.spacing_mm, "size": list(config.model_shape),
                     "slice_axis": "axial"},
    }


def preprocess_options(config: MRDiffConfig) -> dict[str, Any]:
    return {"spacing_mm": config.spacing_mm, "model_shape": tuple(config.model_shape), "segmentation": "none"}


def load_model(config: MRDiffConfig, weights: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    from mrsynth_cli.families.mrdiff.network import MRDiffNetwork

    network = MRDiffNetwork(config)
    try:
        network.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    except RuntimeError as exc:
        raise InputError(
            "the weights do not fit the mrdiff configuration in the manifest",
            "re-import the checkpoint with its own config",
        ) from exc
    return network.to(device).eval()


def resolve_acquisition(
    config: MRDiffConfig, files: Mapping[Contrast, Path], overrides: Mapping[Contrast, Mapping[str, float]] | None
) -> dict[Contrast, Acquisition]:
    """Each model input's TR/TE/TI from ``overrides`` (the ``--tr/--te/--ti`` flags) or its file's sidecar."""
    return _resolve(config.input_contrasts, dict(files), overrides)


def synthesize(
    model: torch.nn.Module,
    config: MRDiffConfig,
    prep: Any,
    targets: list[Contrast],
    *,
    sampler: str | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device,
    progress: bool = False,
    acquisition: Mapping[Contrast, Acquisition] | None = None,
) -> dict[Contrast, np.ndarray]:
    """One sample of the target (``--samples N`` calls this N times with the same generator).

    Raises:
        InputError: no acquisition parameters were resolved for the inputs.
    """
    from mrsynth_cli.families.mrdiff.inference import build_sampler, synthesize_volume

    if acquisition is None or any(c not in acquisition for c in config.input_contrasts):
        raise InputError("mrdiff needs the TR/TE of every input", HOW_TO_SUPPLY)
    given = acquisition_tensor(config.input_contrasts, acquisition)
    for line in protocol_mismatches(config.input_contrasts, given, config.training_acquisition):
        log.warning("%s; expect a domain shift", line)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    out = synthesize_volume(
        model, config, prep.model_inputs, prep.model_brain_mask, given,
        sampler=build_sampler(config, sampler, steps), generator=generator, device=device, progress=progress,
    )
    return {targets[0]: out}
