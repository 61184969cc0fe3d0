"""Progressive distillation, round after round, on the engine's training loop.

Round r distils a ``2N``-step teacher (DDIM, eta = 0, on its grid) into an ``N``-step student that
starts from the teacher's weights; the round's EMA weights then teach round r + 1. Each round is an
ordinary training run of :func:`~mrsynth_cli.training.loop.train_loop` in ``OUT/round-<r>-<N>steps/``
(checkpoints with RNG state, ``--resume``), and its checkpoint is a complete, importable model of the
family whose config records the distillation (:class:`~mrsynth_cli.distill.record.DistillationRecord`).
At the end the last student is also written to ``OUT/checkpoint`` for ``mrsynth weights import``.

Resuming: the latest round that has a checkpoint is continued if it has fewer than
``steps_per_round`` steps, otherwise the next round starts; earlier rounds are done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mrsynth_cli.distill.objective import RoundPlan, distillation_loss, draw_round_batch, plan_rounds, teacher_target
from mrsynth_cli.distill.record import WEIGHTINGS, DistillationRecord
from mrsynth_cli.distill.task import DistillationTask
from mrsynth_cli.errors import InputError
from mrsynth_cli.training.checkpoint import WEIGHTS_FILE, load_weights, read_checkpoint_config, save_checkpoint
from mrsynth_cli.training.loop import TrainSettings, train_loop

__all__ = ["DistillSettings", "make_round_loss", "progressive_distill", "round_folder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    """Settings of a distillation run (the loop settings of every round, plus the step plan).

    ``from_steps`` is the teacher's DDIM step count the first round distils (None: 64, or the
    teacher's own steps when the teacher is already a student).
    """

    to_steps: int = 4
    from_steps: int | None = None
    steps_per_round: int = 500
    minutes_per_round: float | None = None
    learning_rate: float = 1e-4
    ema_decay: float = 0.995
    warmup_steps: int = 20
    weighting: str = "truncated-snr"
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"unknown weighting '{self.weighting}'", f"choose one of {', '.join(WEIGHTINGS)}")

    def loop(self, round_index: int) -> TrainSettings:
        return TrainSettings(
            max_steps=self.steps_per_round, max_minutes=self.minutes_per_round, learning_rate=self.learning_rate,
            weight_decay=0.0, ema_decay=self.ema_decay, checkpoint_every=self.checkpoint_every,
            validate_every=10**9, seed=self.seed + round_index, device=self.device,
            warmup_steps=self.warmup_steps, augment="none",
        )


def check_plan(source_config: dict[str, Any], settings: DistillSettings) -> list[RoundPlan]:
    """The rounds for a teacher config, checked before any data is loaded (same rules as the run)."""
    from mrsynth_cli.distill.record import student_record

    origin = student_record(source_config)
    from_steps = settings.from_steps or (origin.steps if origin else 64)
    if origin is not None and from_steps != origin.steps:
        raise InputError(
            f"the teacher is a {origin.steps}-step student, not a {from_steps}-step one",
            f"drop --from-steps (or give --from-steps {origin.steps})",
        )
    return plan_rounds(int(source_config.get("num_train_timesteps", 1000)), from_steps, settings.to_steps)


def check_out_dir(out_dir: Path, plans: list[RoundPlan], resume: bool) -> int:
    """The index of the latest round with a checkpoint (-1: none), after checking it against ``--resume``.

    Raises:
        InputError: a run exists without ``--resume``, or ``--resume`` finds none.
    """
    latest = _latest_round(Path(out_dir), len(plans), plans)
    if latest >= 0 and not resume:
        raise InputError(
            f"{out_dir} already holds a distillation run", "pass --resume to continue it, or choose a new --out"
        )
    if latest < 0 and resume:
        raise InputError(f"cannot resume: {out_dir} holds no distillation round", "start without --resume")
    return latest


def round_folder(out_dir: Path, index: int, plan: RoundPlan) -> Path:
    return Path(out_dir) / f"round-{index + 1}-{plan.student_steps}steps"


def make_round_loss(task: DistillationTask, teacher: torch.nn.Module, teacher_prediction: str, plan: RoundPlan,
                    weighting: str):
    """``compute_loss(student, batch, generator)`` for one round (the training loop's contract).

    ``teacher_prediction`` is ``v_prediction`` exactly when the teacher is itself a student (then it
    reads its first timestep as SNR 0, like the student).
    """
    teacher_is_student = teacher_prediction == "v_prediction"

    def compute_loss(network: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        device = next(teacher.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        x0 = batch["x0"]
        t, t_mid, t_end = draw_round_batch(plan, x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        z_t = task.schedule.q_sample(x0, t, noise)

        def teacher_fn(z: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            return task.predict(teacher, z, tt.to(device), batch)

        path = [t, t_mid] if plan.teacher_steps == 2 * plan.student_steps else [t]
        x_target = teacher_target(teacher_fn, teacher_prediction, task.schedule, z_t, path, t_end,
                                  teacher_zero_first=teacher_is_student, x0_bound=task.x0_bound)
        v_hat = task.predict(network, z_t, t.to(device), batch)
        return distillation_loss(v_hat, z_t, t, x_target, task.schedule, weighting).mean()

    return compute_loss


def _latest_round(out_dir: Path, count: int, plans: list[RoundPlan]) -> int:
    existing = [i for i in range(count) if (round_folder(out_dir, i, plans[i]) / "checkpoint" / "config.json").exists()]
    return max(existing) if existing else -1


def progressive_distill(
    task: DistillationTask, out_dir: Path, settings: DistillSettings, *, resume: bool = False, progress: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Distil ``task``'s teacher down to ``settings.to_steps`` steps; returns ``OUT/checkpoint`` and a summary.

    Raises:
        InputError: a bad step plan, an existing run without ``--resume``, or ``--resume`` with nothing to resume.
    """
    from mrsynth_cli.devices import resolve_device
    from mrsynth_cli.weights.store import sha256_of

    out_dir = Path(out_dir)
    origin = task.teacher_record
    from_steps = settings.from_steps or (origin.steps if origin else 64)
    if origin is not None and from_steps != origin.steps:
        raise InputError(
            f"the teacher is a {origin.steps}-step student, not a {from_steps}-step one",
            f"drop --from-steps (or give --from-steps {origin.steps})",
        )
    T = task.schedule.num_train_timesteps
    plans = plan_rounds(T, from_steps, settings.to_steps)
    latest = check_out_dir(out_dir, plans, resume)
    device = resolve_device(settings.device)
    teacher_state = task.teacher_weights
    teacher_prediction = "v_prediction" if origin else task.teacher_prediction
    parent_sha = task.source.sha256
    first_round = origin.round if origin else 0
    history = []
    ckpt = None
    for index, plan in enumerate(plans):
        folder = round_folder(out_dir, index, plan)
        record = DistillationRecord(
            teacher_sha256=origin.teacher_sha256 if origin else task.source.sha256,
            teacher_name=origin.teacher_name if origin else task.source.name,
            teacher_steps=origin.teacher_steps if origin else from_steps,
            teacher_prediction=origin.teacher_prediction if origin else task.teacher_prediction,
            steps=plan.student_steps, grid=plan.student_grid, round=first_round + index + 1,
            parent_sha256=parent_sha, weighting=settings.weighting,
        )
        config = task.student_config(record)
        ckpt = folder / "checkpoint"
        done = index < latest or (
            index == latest and read_checkpoint_config(ckpt).step >= settings.steps_per_round
        )
        if not done:
            log.info("distillation round %d: %d -> %d steps", record.round, plan.teacher_steps, plan.student_steps)
            teacher = task.build_network()
            teacher.load_state_dict(teacher_state, strict=True)
            teacher.to(device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            student = task.build_network()
            student.load_state_dict(teacher_state, strict=True)
            validate = (lambda net, c=config: task.validate(net, c)) if task.validate else None
            train_loop(
                family=task.family, config=config, network=student,
                sample_batch=task.sample_batch,
                compute_loss=make_round_loss(task, teacher, teacher_prediction, plan, settings.weighting),
                out_dir=folder, settings=settings.loop(index), validate=validate,
                resume=index == latest, progress=progress,
            )
            del teacher, student
        teacher_state = load_weights(ckpt / WEIGHTS_FILE)
        parent_sha = sha256_of(ckpt / WEIGHTS_FILE)
        teacher_prediction = "v_prediction"
        history.append({"round": record.round, "steps": plan.student_steps, "checkpoint": str(ckpt),
                        "sha256": parent_sha, "validation": _last_validation(folder)})
    assert ckpt is not None
    final = out_dir / "checkpoint"
    info = read_checkpoint_config(ckpt)
    meta = json.loads((ckpt / "config.json").read_text())
    save_checkpoint(final, family=info.family, config=info.config, weights=teacher_state, train_state=None,
                    step=info.step, training={**meta.get("training", {}), "distillation_rounds": history})
    return final, {"rounds": history, "from_steps": from_steps, "to_steps": settings.to_steps}


def _last_validation(folder: Path) -> dict[str, Any]:
    log_path = folder / "train_log.jsonl"
    last: dict[str, Any] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            if "validation" in record:
                last = record["validation"]
    return last
