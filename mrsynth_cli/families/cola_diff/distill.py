"""CoLa-Diff's side of progressive distillation (:mod:`mrsynth_cli.distill`): the teacher, its latents and conditions.

* The network is the whole :class:`~.network.CoLaDiffModel` (frozen autoencoder included, so every
  round's checkpoint is a complete model for ``mrsynth weights import``).
* ``predict`` is the first ``latent_channels`` output channels: the teacher's eps head, read as v by the
  students; the learned-variance channels are not used by DDIM-style sampling and receive no loss.
* Batches come from the same latent data as ``mrsynth train cola-diff``: every training slice encoded
  once (and mirrored), input dropout, structural guidance maps from the available inputs only.
* A student's config is the teacher's with ``distillation`` set and ``sampler = "distilled"``.
* The teacher's x estimates are clamped to the largest |value| of the scaled training target latents.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mrsynth_cli.distill.record import DistillationRecord
from mrsynth_cli.distill.task import DistillationTask, TeacherSource
from mrsynth_cli.errors import InputError
from mrsynth_cli.families.cola_diff.config import CoLaDiffConfig

__all__ = ["distillation_task"]

log = logging.getLogger(__name__)


def distillation_task(
    source: TeacherSource,
    data: list[Path],
    *,
    device: str = "auto",
    validation_subjects: list[str] | None = None,
    cache_dir: Path | None = None,
    batch_size: int | None = None,
    flips: bool = True,
) -> DistillationTask:
    """The :class:`~mrsynth_cli.distill.task.DistillationTask` of a CoLa-Diff teacher on subject folders ``data``.

    Raises:
        InputError: weights that do not fit the config, or no usable subjects.
    """
    from mrsynth_cli.devices import resolve_device
    from mrsynth_cli.families.cola_diff.data import make_batch_sampler, prepare_latent_subjects
    from mrsynth_cli.families.cola_diff.inference import noise_schedule
    from mrsynth_cli.families.cola_diff.network import CoLaDiffModel
    from mrsynth_cli.families.cola_diff.train import validation_metrics
    from mrsynth_cli.training.checkpoint import load_weights
    from mrsynth_cli.training.data import TissueRequest, load_training_subjects, split_validation

    config = CoLaDiffConfig.from_dict(source.config)
    if batch_size is not None:
        config = replace(config, batch_size=batch_size)
    weights = load_weights(source.weights_path)
    torch_device = resolve_device(device)
    teacher = CoLaDiffModel(config)
    try:
        teacher.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise InputError(f"the weights in {source.weights_path} do not fit their cola-diff config",
                         "give the checkpoint folder written by mrsynth train cola-diff") from exc
    teacher.to(torch_device).eval()
    tissues = None
    if config.active_guidance_maps:
        tissues = TissueRequest(method=config.segmentation, sources=tuple(config.input_contrasts),
                                subsets=config.guidance_subsets == "each")
    subjects = load_training_subjects(
        data, [config.target_contrast, *config.input_contrasts], required=[config.target_contrast],
        spacing_mm=config.spacing_mm, model_shape=config.model_shape, cache_dir=cache_dir, tissues=tissues,
    )
    train_subjects, val_subjects = split_validation(subjects, validation_subjects)
    log.info("distillation data: %s; validation: %s", [s.subject_id for s in train_subjects],
             [s.subject_id for s in val_subjects])
    scale = float(teacher.latent_scale)
    latent_subjects = prepare_latent_subjects(teacher, config, train_subjects, torch_device, flips=flips)
    del teacher
    channels = config.latent_channels
    # the data range of the scaled target latents: the clamp of the teacher's x estimates
    x0_bound = scale * max(float(s.latents[config.target_contrast].abs().max()) for s in latent_subjects)

    def build_network() -> torch.nn.Module:
        return CoLaDiffModel(config)

    def predict(network: torch.nn.Module, x_t: Tensor, t: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return network(x_t, t, batch["cond"], batch["presence"])[:, :channels]

    def student_config(record: DistillationRecord) -> dict[str, Any]:
        return replace(config, distillation=record, sampler="distilled", sampling_steps=record.steps).to_dict()

    def validate(network: torch.nn.Module, student: dict[str, Any]) -> dict[str, float]:
        return validation_metrics(network, CoLaDiffConfig.from_dict(student), val_subjects, torch_device)

    return DistillationTask(
        family="cola-diff",
        source=source,
        schedule=noise_schedule(config),
        teacher_prediction="v_prediction" if config.distillation else "epsilon",
        teacher_weights=weights,
        build_network=build_network,
        predict=predict,
        sample_batch=make_batch_sampler(config, latent_subjects, scale),
        student_config=student_config,
        validate=validate if val_subjects else None,
        teacher_record=config.distillation,
        x0_bound=x0_bound,
        summary={"train_subjects": [s.subject_id for s in train_subjects],
                 "validation_subjects": [s.subject_id for s in val_subjects]},
    )
