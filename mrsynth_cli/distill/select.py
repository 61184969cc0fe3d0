"""Which model and sampler ``mrsynth synthesize`` runs when distilled students are installed.

Students are manifest entries like any other, but routing never picks one by itself: a student is
reached through its teacher (``config.distillation.teacher_sha256`` equals the sha256 of the
teacher's weights file) or by naming it with ``--model``.

* ``--sampler distilled``: the teacher's student (with ``--steps N``: the one with N steps; otherwise
  the one with the most steps); a model without a student is a one-line error.
* ``--sampler auto``: on the CPU the student when one exists (DDIM-50 is minutes per volume there),
  on a GPU the teacher with its own default sampler (DDIM for CoLa-Diff).
* any other sampler: the teacher, unchanged.
* a student named with ``--model`` samples only with ``distilled`` (or ``auto``).
"""

from __future__ import annotations

from mrsynth_cli.distill.record import is_student, student_record
from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.weights.manifest import ModelEntry

__all__ = ["routable", "students_of", "pick_students"]


def routable(entries: list[ModelEntry], model: str | None) -> list[ModelEntry]:
    """The entries routing may choose from: every non-student, plus the student named by ``--model``."""
    return [e for e in entries if not is_student(e.config) or e.name == model]


def students_of(entries: list[ModelEntry], teacher: ModelEntry) -> list[ModelEntry]:
    """The installed students of ``teacher`` (same family, distilled from its weights file)."""
    shas = {f.sha256 for f in teacher.files}
    return [
        e for e in entries
        if e.family == teacher.family and is_student(e.config) and student_record(e.config).teacher_sha256 in shas
    ]


def _pick(students: list[ModelEntry], steps: int | None) -> ModelEntry | None:
    if steps is not None:
        fitting = [s for s in students if student_record(s.config).steps == steps]
        return min(fitting, key=lambda s: s.name) if fitting else None
    return max(students, key=lambda s: (student_record(s.config).steps, s.name), default=None)


def pick_students(
    entries: list[ModelEntry], chosen: dict[Contrast, ModelEntry], sampler: str, steps: int | None, device_type: str
) -> tuple[dict[Contrast, ModelEntry], dict[str, str]]:
    """``chosen`` with teachers swapped for students where the sampler asks for it, and the sampler per model name.

    Raises:
        InputError: ``--sampler distilled`` for a model without a (fitting) student, or another sampler
            for a student.
    """
    out: dict[Contrast, ModelEntry] = {}
    samplers: dict[str, str] = {}
    for target, entry in chosen.items():
        if is_student(entry.config):
            if sampler not in ("auto", "distilled"):
                raise InputError(
                    f"model {entry.name} is a distilled student; it samples only with --sampler distilled",
                    "drop --sampler (or use distilled), or pick its teacher for other samplers",
                )
            out[target], samplers[entry.name] = entry, "distilled"
            continue
        students = students_of(entries, entry)
        if sampler == "distilled":
            student = _pick(students, steps)
            if student is None:
                have = ", ".join(f"{s.name} ({student_record(s.config).steps} steps)" for s in students)
                raise InputError(
                    f"model {entry.name} has no distilled student"
                    + (f" with {steps} steps (has {have})" if have else ""),
                    f"train one: mrsynth train distill --model {entry.name} --to-steps 4, then mrsynth weights import",
                )
            out[target], samplers[student.name] = student, "distilled"
        elif sampler == "auto" and device_type == "cpu" and (student := _pick(students, steps)) is not None:
            out[target], samplers[student.name] = student, "distilled"
        else:
            out[target], samplers[entry.name] = entry, sampler
    return out, samplers
