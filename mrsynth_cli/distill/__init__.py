"""Progressive distillation (Salimans & Ho 2022, "Progressive distillation for fast sampling of diffusion
models", ICLR): a trained diffusion teacher is distilled into students that need half as many sampling
steps each round (e.g. 64 -> 32 -> 16 -> 8 -> 4), so a CPU can sample a volume in seconds.

* :mod:`~mrsynth_cli.distill.objective`: the time grids, the two-teacher-steps target and the loss;
* :mod:`~mrsynth_cli.distill.rounds`: the rounds on the engine's training loop (checkpointed, resumable);
* :mod:`~mrsynth_cli.distill.task`: the interface a family implements (CoLa-Diff first);
* :mod:`~mrsynth_cli.distill.record`: what a student records in its config (its teacher's sha256...);
* :mod:`~mrsynth_cli.distill.select`: which manifest model and sampler ``synthesize`` uses.

Students are sampled by :class:`mrsynth_cli.sampling.distilled.DistilledSampler`.
"""

from mrsynth_cli.distill.record import DistillationRecord, is_student, student_record

__all__ = ["DistillationRecord", "is_student", "student_record"]
