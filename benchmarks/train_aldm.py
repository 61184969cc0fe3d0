"""Train ALDM at CPU scale on the shared real data (three stages), then score one held-out subject's
full source -> target matrix (the paper's Table 2 layout) and write a montage of one 3D output.

1. ``mrsynth train aldm --stage vqgan``, then ``--stage spade``, then ``--stage ldm`` (``--config cpu``:
   2 mm, 80x96x80 whole volumes, latent 3x20x24x20) on the subjects of ``train_shipped_unet.SUBJECTS``
   except ``--held-out``; each stage is capped by ``--minutes`` (wall time, one thread) and resumes.
2. The ldm checkpoint is imported; for every source contrast of the held-out subject one
   ``mrsynth synthesize --in SRC=... --target <the other three> --out-dir`` call writes all targets (DDIM,
   ``--steps``), and ``mrsynth evaluate`` scores each against the real image.
3. A montage (axial, coronal, sagittal) of the real and synthetic T2 of the T1 row: the sagittal panel
   shows whether the 3D model stripes across slices.

Usage: python benchmarks/train_aldm.py [--held-out patient19] [--minutes 11 4 10] [--steps 50]
Results: benchmarks/results/aldm_real.json, benchmarks/results/aldm_montage.png (runs under benchmarks/runs/aldm)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_shipped_unet as unet_driver  # noqa: E402
from _util import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "benchmarks" / "runs" / "aldm"
SUBJECTS = unet_driver.SUBJECTS
CONTRASTS = ["T1", "T1ce", "T2", "FLAIR"]


def mrsynth(*args: str, threads: int = 1, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MRSYNTH_DEBUG": "1",
           "PYTHONPATH": str(REPO)}
    if home is not None:
        env["MRSYNTH_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "mrsynth_cli", *args], env=env, capture_output=True, text=True)


def stage(name: str, data: list[str], minutes: float, previous: list[str]) -> Path:
    out = ROOT / name
    meta = out / "checkpoint" / "config.json"
    memo = out / "seconds.json"  # wall seconds of the run(s) that trained it
    if meta.exists() and json.loads(meta.read_text())["training"].get("final"):
        return out / "checkpoint"
    resume = ["--resume"] if meta.exists() else []
    started = time.time()
    result = mrsynth("train", "aldm", "--stage", name, "--data", *data, "--out", str(out), "--config", "cpu",
                     "--max-steps", "100000", "--max-minutes", str(minutes), "--checkpoint-every", "25",
                     "--device", "cpu", *previous, *resume)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{result.stderr[-3000:]}")
    seconds = time.time() - started + (json.loads(memo.read_text())["seconds"] if memo.exists() else 0.0)
    memo.write_text(json.dumps({"seconds": round(seconds)}))
    print(f"stage {name}: {time.time() - started:.0f} s; {result.stdout.strip()}", flush=True)
    return out / "checkpoint"


def _score(files: dict[str, Path], out_dir: Path, targets: list[str]) -> dict:
    scores = {}
    for target in targets:
        pred = next(out_dir.glob(f"*_desc-synth_{target}.nii.gz"))
        scored = mrsynth("evaluate", "--pred", str(pred), "--ref", str(files[target]), "--json")
        metrics = json.loads(scored.stdout)["metrics"]
        scores[target] = {k: round(metrics[k], 4) for k in ("psnr", "nmse", "ssim3d", "fsim") if k in metrics}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", default="patient19", choices=list(SUBJECTS))
    parser.add_argument("--minutes", type=float, nargs=3, default=[11.0, 4.0, 10.0], help="vqgan, spade, ldm")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for scoring")
    parser.add_argument("--sources", nargs="+", default=CONTRASTS, choices=CONTRASTS, help="matrix rows to score")
    args = parser.parse_args()
    data = [str(SUBJECTS[s]) for s in SUBJECTS if s != args.held_out]
    vq = stage("vqgan", data, args.minutes[0], [])
    sp = stage("spade", data, args.minutes[1], ["--autoencoder", str(vq)])
    ldm = stage("ldm", data, args.minutes[2], ["--spade", str(sp)])
    timings = {f"{n}_s": json.loads((ROOT / n / "seconds.json").read_text())["seconds"]
               for n in ("vqgan", "spade", "ldm") if (ROOT / n / "seconds.json").exists()}

    from mrsynth_cli.io.contrasts import parse_contrast
    from mrsynth_cli.io.subjects import subject_from_folder

    home = ROOT / "scoring-home"
    imported = mrsynth("weights", "import", str(ldm), "--name", "aldm-cpu", "--force", home=home)
    if imported.returncode != 0:
        raise RuntimeError(imported.stderr[-3000:])
    subject = subject_from_folder(SUBJECTS[args.held_out])
    files = {c: subject.files[parse_contrast(c)] for c in CONTRASTS}
    matrix: dict[str, dict[str, dict]] = {}
    for source in args.sources:
        targets = [t for t in CONTRASTS if t != source]
        out_dir = home / "pred" / source
        memo = out_dir / "seconds.json"
        done = all(any(out_dir.glob(f"*_desc-synth_{t}.nii.gz")) for t in targets)
        if done and all(p.stat().st_mtime > (ldm / "model.safetensors").stat().st_mtime
                        for p in out_dir.glob("*_desc-synth_*.nii.gz")):
            # Synthesized already by this model (an interrupted run): score the files again.
            matrix[source] = _score(files, out_dir, targets)
            matrix[source]["synthesize_seconds_all_targets"] = (
                json.loads(memo.read_text())["seconds"] if memo.exists() else None)
            print(source, matrix[source], flush=True)
            continue
        t0 = time.time()
        result = mrsynth("synthesize", "--in", f"{source}={files[source]}", "--target", *targets, "--out-dir",
                         str(out_dir), "--model", "aldm-cpu", "--registration", "none", "--steps", str(args.steps),
                         "--force", threads=2, home=home)
        if result.returncode != 0:
            raise RuntimeError(f"synthesize from {source} failed:\n{result.stderr[-3000:]}")
        seconds = time.time() - t0
        memo.write_text(json.dumps({"seconds": round(seconds, 1)}))
        matrix[source] = _score(files, out_dir, targets)
        matrix[source]["synthesize_seconds_all_targets"] = round(seconds, 1)
        print(source, matrix[source], flush=True)

    from mrsynth_cli.io.volume import load_volume
    from mrsynth_cli.qc import write_montage

    pred = next((home / "pred" / "T1").glob("*_desc-synth_T2.nii.gz"))
    montage = REPO / "benchmarks" / "results" / "aldm_montage.png"
    write_montage({"real T2": load_volume(files["T2"]), "ALDM T1->T2": load_volume(pred),
                   "real T1 (source)": load_volume(files["T1"])}, montage)
    logs = {}
    for name in ("vqgan", "spade", "ldm"):
        records = [json.loads(line) for line in (ROOT / name / "train_log.jsonl").read_text().splitlines()]
        steps = [r for r in records if "loss" in r]
        logs[name] = {"steps": steps[-1]["step"] if steps else None, "first_loss": steps[0]["loss"] if steps else None,
                      "last_loss": steps[-1]["loss"] if steps else None}
    write_result("aldm_real", {
        "held_out": args.held_out, "train_subjects": [s for s in SUBJECTS if s != args.held_out],
        "recipe": "--config cpu (2 mm, 80x96x80, latent 3x20x24x20), one thread per stage, --max-minutes per stage",
        "stage_minutes_cap": args.minutes,
        "stage_wall_seconds (preprocessing and latent encoding included)": timings, "training_logs": logs,
        "ddim_steps": args.steps, "matrix": matrix, "montage": str(montage.relative_to(REPO)),
        "note": "metrics from mrsynth evaluate (both volumes scaled to their own 0.5/99.5 brain percentiles)",
    })


if __name__ == "__main__":
    main()
