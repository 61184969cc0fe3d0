"""What a distilled student records about itself (in its resolved config, under ``"distillation"``).

The record is family-agnostic: every family that supports distillation keeps it verbatim as its
config's ``distillation`` entry, so the manifest can tell students from teachers
(:func:`is_student`) and find the students of a teacher by the sha256 of the teacher's weights file.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from mrsynth_cli.errors import InputError

__all__ = ["WEIGHTINGS", "DistillationRecord", "is_student", "student_record"]

#: Loss weightings of Salimans & Ho 2022, Sec. 4: ``truncated-snr`` is ``max(SNR, 1)`` (their Algorithm 2),
#: ``snr+1`` is ``1 + SNR`` (the weighting that the v-loss ``||v - v_hat||^2`` implies).
WEIGHTINGS = ("truncated-snr", "snr+1")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DistillationRecord:
    """A student of progressive distillation.

    Attributes:
        teacher_sha256: sha256 of the ORIGINAL teacher's weights file (the model in the manifest that
            ``--sampler auto`` resolves to this student).
        teacher_name: the teacher's manifest name, or its checkpoint folder (information only).
        teacher_steps: the DDIM (eta = 0) step count of the original teacher that distillation started from.
        teacher_prediction: what the original teacher predicts (``epsilon`` for CoLa-Diff).
        steps: this student's number of sampling steps (= network evaluations).
        grid: the student's timesteps on the teacher's discrete schedule, descending (``steps`` entries;
            after the last one the sample is x_0).
        round: 1 for the first halving, 2 for the next...
        parent_sha256: sha256 of the weights this round was distilled from (the teacher's in round 1).
        prediction_type: what the student's head predicts: always ``v_prediction``.
        weighting: the loss weighting (:data:`WEIGHTINGS`).
    """

    teacher_sha256: str
    teacher_name: str
    teacher_steps: int
    teacher_prediction: str
    steps: int
    grid: tuple[int, ...]
    round: int
    parent_sha256: str
    prediction_type: str = "v_prediction"
    weighting: str = "truncated-snr"

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(t) for t in self.grid))
        problems = [
            (bool(_SHA256.match(self.teacher_sha256)), "teacher_sha256 is not a sha256"),
            (bool(_SHA256.match(self.parent_sha256)), "parent_sha256 is not a sha256"),
            (len(self.grid) == self.steps >= 1, "grid must have one timestep per step"),
            (list(self.grid) == sorted(set(self.grid), reverse=True), "grid must be strictly descending"),
            (self.prediction_type == "v_prediction", "students predict v (prediction_type = v_prediction)"),
            (self.weighting in WEIGHTINGS, f"weighting must be one of {WEIGHTINGS}"),
        ]
        for ok, problem in problems:
            if not ok:
                raise InputError(f"distillation record: {problem}", "re-run mrsynth train distill")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationRecord:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"distillation record has unknown keys {sorted(unknown)}", f"known keys: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"distillation record is incomplete ({exc})", "re-run mrsynth train distill") from None


def student_record(config: dict[str, Any]) -> DistillationRecord | None:
    """The record in a resolved config (any family), or None for an ordinary model."""
    raw = config.get("distillation")
    return None if raw is None else DistillationRecord.from_dict(dict(raw))


def is_student(config: dict[str, Any]) -> bool:
    return config.get("distillation") is not None
