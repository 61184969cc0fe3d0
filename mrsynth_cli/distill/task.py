"""The small interface between progressive distillation and a model family.

A family that supports distillation gives its adapter a function
``distillation_task(source, data, *, device, validation_subjects, cache_dir) -> DistillationTask``
(CoLa-Diff: :func:`mrsynth_cli.families.cola_diff.distill.distillation_task`). The task carries only
what the algorithm needs and nothing about the family's internals:

* ``build_network()``: a fresh network of the teacher's architecture (teacher and students share it;
  the student's output head is the teacher's head, read as v instead of eps);
* ``predict(network, x_t, t, batch)``: the network's prediction (the first ``C`` channels of the
  output, i.e. without any learned-variance channels) for noisy samples ``x_t`` at integer
  timesteps ``t`` (Tensor[B]) under the batch's conditions;
* ``sample_batch(rng)``: a training batch ``{"x0": clean samples (latents for a latent model), ...
  conditions}`` drawn with the passed numpy generator;
* ``schedule``: the teacher's discrete noise schedule;
* ``student_config(record)``: the resolved config of a student (the teacher's config with
  ``distillation`` set to the record's dict), which the family's adapter must accept;
* ``validate(network, config)``: optional metrics of a student sampled with its own steps;
* ``x0_bound``: optional clamp of the teacher's x estimates (the data range; see the objective).

Bridge models (MMDM's Brownian bridge) are NOT covered: their chain starts at the source image, not
at Gaussian noise, so "two DDIM steps of the teacher" becomes two deterministic (eta = 0) bridge steps
and the student's target must be solved from the bridge's update
(:mod:`mrsynth_cli.sampling.bridge`) instead of the Gaussian DDIM update of
:func:`~mrsynth_cli.distill.objective.teacher_target`. The hook for it is ``DistillationTask.kind``:
``"gaussian"`` is implemented; a bridge family would add ``"bridge"`` and its own target function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mrsynth_cli.distill.record import DistillationRecord
from mrsynth_cli.sampling.schedule import NoiseSchedule

__all__ = [
    "TeacherSource", "DistillationTask", "teacher_from_checkpoint", "teacher_from_manifest", "distillation_task_for",
]


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher comes from: a checkpoint folder or a manifest model (weights already verified)."""

    family: str
    config: dict[str, Any]
    weights_path: Path
    sha256: str
    name: str


@dataclass
class DistillationTask:
    """What a family hands to :func:`mrsynth_cli.distill.rounds.progressive_distill` (see the module docstring)."""

    family: str
    source: TeacherSource
    schedule: NoiseSchedule
    teacher_prediction: str
    teacher_weights: dict[str, Tensor]
    build_network: Callable[[], torch.nn.Module]
    predict: Callable[[torch.nn.Module, Tensor, Tensor, dict[str, Tensor]], Tensor]
    sample_batch: Callable[[np.random.Generator], dict[str, Tensor]]
    student_config: Callable[[DistillationRecord], dict[str, Any]]
    validate: Callable[[torch.nn.Module, dict[str, Any]], dict[str, float]] | None = None
    teacher_record: DistillationRecord | None = None  # set when the teacher is itself a student
    x0_bound: float | None = None  # clamp for the teacher's x estimates (objective module docstring)
    kind: str = "gaussian"
    summary: dict[str, Any] | None = None


def teacher_from_checkpoint(checkpoint: Path) -> TeacherSource:
    """A teacher from a checkpoint folder written by ``mrsynth train`` (or by an earlier distillation)."""
    from mrsynth_cli.training.checkpoint import WEIGHTS_FILE, read_checkpoint_config
    from mrsynth_cli.weights.store import sha256_of

    info = read_checkpoint_config(checkpoint)
    weights = info.path / WEIGHTS_FILE
    if not weights.exists():
        from mrsynth_cli.errors import InputError

        raise InputError(f"{info.path} has no {WEIGHTS_FILE}", "give the checkpoint folder written by mrsynth train")
    return TeacherSource(info.family, info.config, weights, sha256_of(weights), str(info.path))


def teacher_from_manifest(name: str, weights_dir: Path) -> TeacherSource:
    """A teacher from the manifest (packaged or imported), its weights file verified against its sha256."""
    from mrsynth_cli.weights.manifest import all_entries
    from mrsynth_cli.weights.store import ensure_files

    entries = {e.name: e for e in all_entries(weights_dir)}
    if name not in entries:
        import difflib

        from mrsynth_cli.errors import InputError

        close = difflib.get_close_matches(name, list(entries), n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise InputError(f"unknown model '{name}'", f"{guess}installed: {', '.join(entries) or 'none'}")
    entry = entries[name]
    path = ensure_files(entry, weights_dir)[0]
    return TeacherSource(entry.family, entry.config, path, entry.files[0].sha256, entry.name)


def distillation_task_for(source: TeacherSource, data: list[Path], **options: Any) -> DistillationTask:
    """The family's task for ``source`` (its adapter's optional ``distillation_task``).

    Raises:
        InputError: the family does not support distillation.
    """
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.registry import load_adapter

    build = getattr(load_adapter(source.family), "distillation_task", None)
    if build is None:
        raise InputError(f"the {source.family} family does not support distillation yet", "distil a cola-diff model")
    return build(source, data, **options)
