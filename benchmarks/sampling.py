"""Quality against speed of every sampler of a diffusion model and its distilled students, in one run.

For each family with weights (CoLa-Diff now; ALDM, MRDiff and MMDM when they land) and each held-out
case: ``mrsynth synthesize`` (fresh process, 2 CPU threads, ``benchmarks/_util.run_measured``: wall
seconds per volume end to end, peak RSS) with

* DDPM with ``--ddpm-steps`` steps (250 by default: 1000 ancestral steps take ~40 min per volume on 2
  CPU threads for the CPU-scale CoLa-Diff; the row says how many were run),
* DDIM 50 and DDIM 10 (eta = 0), Kong & Ping's fast sampler 10 (VAR, kappa = 0),
* the distilled students with 4 and 1 steps (``--sampler distilled --steps N``: the student of the
  teacher whose sha256 it records),

all with the same seed (0), ``--registration none`` and the same normalisation (``mrsynth evaluate``:
0.5/99.5 percentiles inside the brain), then PSNR/SSIM against the acquired target. NFE is network
evaluations per slice (one per step for every sampler here). Students missing on the command line are
reported as such, not skipped silently.

Usage:
    python benchmarks/sampling.py --teacher RUN/checkpoint --student DISTILL4/checkpoint
        [--student DISTILL1/checkpoint] --case SUBJECT_FOLDER [--case ...] [--target flair]
        [--ddpm-steps 250] [--only ddim-50,distilled-4] [--name sampling]
Results: benchmarks/results/<name>.json and a Markdown table on stdout (for README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, run_measured, write_result  # noqa: E402

sys.path.insert(0, str(REPO))  # this checkout's mrsynth_cli, also for the child processes (PYTHONPATH below)

MRSYNTH = [sys.executable, "-m", "mrsynth_cli"]


def settings(ddpm_steps: int) -> dict[str, list[str]]:
    return {
        f"ddpm-{ddpm_steps}": ["--sampler", "ddpm", "--steps", str(ddpm_steps)],
        "ddim-50": ["--sampler", "ddim", "--steps", "50"],
        "ddim-10": ["--sampler", "ddim", "--steps", "10"],
        "fast-10": ["--sampler", "fast", "--steps", "10"],
        "distilled-4": ["--sampler", "distilled", "--steps", "4"],
        "distilled-1": ["--sampler", "distilled", "--steps", "1"],
    }


def _run(args: list[str], home: Path) -> dict:
    env = {"MRSYNTH_HOME": str(home), "PYTHONPATH": str(REPO), "MRSYNTH_DEBUG": "0"}
    return run_measured([*MRSYNTH, *args], threads=2, env=env)


def benchmark(teacher: Path, students: list[Path], cases: list[Path], target: str, ddpm_steps: int,
              only: list[str] | None, home: Path, save=None) -> dict:
    """Every setting (``only``: these, in this order) on every case; ``save(result)`` after each row."""
    from mrsynth_cli.distill.record import student_record
    from mrsynth_cli.io.contrasts import parse_contrast
    from mrsynth_cli.io.subjects import subject_from_folder
    from mrsynth_cli.training.checkpoint import read_checkpoint_config

    imported = _run(["weights", "import", str(teacher), "--name", "bench-teacher", "--force"], home)
    if imported["rc"] != 0:
        raise RuntimeError(f"import {teacher} failed:\n{imported['stderr']}")
    family = read_checkpoint_config(teacher).family
    student_steps = []
    for path in students:
        record = student_record(read_checkpoint_config(path).config)
        if record is None:
            raise SystemExit(f"{path} is not a distilled student (no distillation record in its config)")
        name = f"bench-student-{record.steps}"
        result = _run(["weights", "import", str(path), "--name", name, "--force"], home)
        if result["rc"] != 0:
            raise RuntimeError(f"import {path} failed:\n{result['stderr']}")
        student_steps.append(record.steps)
    target_c = parse_contrast(target)
    rows: dict[str, dict] = {}
    table = settings(ddpm_steps)
    unknown = [n for n in only or [] if n not in table]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose among {list(table)}")
    result = {"family": family, "teacher": str(teacher), "students": [str(s) for s in students], "target": target,
              "cases": [str(c) for c in cases], "ddpm_steps": ddpm_steps, "rows": rows}
    for name in only or list(table):
        options = table[name]
        if name.startswith("distilled") and int(options[-1]) not in student_steps:
            rows[name] = {"status": f"no {options[-1]}-step student given (--student)"}
            print(name, rows[name], flush=True)
            if save:
                save(result)
            continue
        per_case = []
        for case in cases:
            subject = subject_from_folder(case)
            given = [f"{c.value}={p}" for c, p in subject.files.items() if c != target_c]
            out = home / "pred" / f"{subject.subject_id}_{name}.nii.gz"
            measured = _run(["synthesize", "--in", *given, "--target", target, "--out", str(out), "--model",
                             "bench-teacher", "--registration", "none", "--seed", "0", "--device", "cpu", "--force",
                             *options], home)
            if measured["rc"] != 0:
                raise RuntimeError(f"{name} on {case} failed:\n{measured['stderr']}")
            sidecar = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
            scored = _run(["evaluate", "--pred", str(out), "--ref", str(subject.files[target_c]), "--json"], home)
            metrics = json.loads(scored["stdout"])["metrics"]
            per_case.append({"case": subject.subject_id, "model": sidecar["Model"]["Name"],
                             "seconds_per_volume": measured["seconds"], "peak_rss_gib": measured["peak_rss_gib"],
                             "psnr": metrics["psnr"], "ssim": metrics["ssim3d"]})
        rows[name] = {
            "nfe_per_slice": int(options[-1]),
            "seconds_per_volume": round(sum(c["seconds_per_volume"] for c in per_case) / len(per_case), 1),
            "peak_rss_gib": max(c["peak_rss_gib"] for c in per_case),
            "psnr": round(sum(c["psnr"] for c in per_case) / len(per_case), 3),
            "ssim": round(sum(c["ssim"] for c in per_case) / len(per_case), 4),
            "cases": per_case,
        }
        print(name, {k: v for k, v in rows[name].items() if k != "cases"}, flush=True)
        if save:
            save(result)
    return result


def markdown(result: dict) -> str:
    head = f"| {result['family']} -> {result['target']} |"
    lines = [head + " NFE/slice | s/volume (2 threads) | peak RSS GiB | PSNR | SSIM |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in result["rows"].items():
        if "status" in row:
            lines.append(f"| {name} | | | | {row['status']} | |")
        else:
            lines.append(f"| {name} | {row['nfe_per_slice']} | {row['seconds_per_volume']} | {row['peak_rss_gib']} | "
                         f"{row['psnr']:.2f} | {row['ssim']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint folder")
    parser.add_argument("--student", type=Path, action="append", default=[], help="distilled student checkpoint(s)")
    parser.add_argument("--case", type=Path, action="append", required=True, help="held-out subject folder(s)")
    parser.add_argument("--target", default="flair")
    parser.add_argument("--ddpm-steps", type=int, default=250)
    parser.add_argument("--only", default="", help="comma list of settings to run, in this order (default: all)")
    parser.add_argument("--name", default="sampling", help="results file name")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s] or None

    def save(result: dict) -> Path:  # after every row, so an interrupted run keeps what it measured
        return write_result(args.name, {"threads": 2, "seed": 0, **result})

    with tempfile.TemporaryDirectory() as tmp:
        result = benchmark(args.teacher, args.student, args.case, args.target, args.ddpm_steps, only, Path(tmp), save)
    print(save(result))
    print(markdown(result))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
