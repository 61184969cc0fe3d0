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
    if meta.exists() and json.loads(meta.read_text())["training"].get("final"):
        return out / "checkpoint"
    resume = ["--resume"] if meta.exists() else []
    started = time.time()
    result = mrsynth("train", "aldm", "--stage", name, "--data", *data, "--out", str(out), "--config", "cpu",
                     "--max-steps", "100000", "--max-minutes", str(minutes), "--checkpoint-every", "25",
                     "--device", "cpu", *previous, *resume)
    if result.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{result.stderr[-3000:]}")
    print(f"stage {name}: {time.time() - started:.0f} s; {result.stdout.strip()}", flush=True)
    return out / "checkpoint"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", default="patient19", choices=list(SUBJECTS))
    parser.add_argument("--minutes", type=float, nargs=3, default=[11.0, 4.0, 10.0], help="vqgan, spade, ldm")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for scoring")
    args = parser.parse_args()
    data = [str(SUBJECTS[s]) for s in SUBJECTS if s != args.held_out]
    timings = {}
    started = time.time()
    vq = stage("vqgan", data, args.minutes[0], [])
    timings["vqgan_s"] = round(time.time() - started)
    sp = stage("spade", data, args.minutes[1], ["--autoencoder", str(vq)])
    timings["spade_s"] = round(time.time() - started) - timings["vqgan_s"]
    ldm = stage("ldm", data, args.minutes[2], ["--spade", str(sp)])
    timings["ldm_s"] = round(time.time() - started) - timings["vqgan_s"] - timings["spade_s"]

    from mrsynth_cli.io.contrasts import parse_contrast
    from mrsynth_cli.io.subjects import subject_from_folder

    home = ROOT / "scoring-home"
    imported = mrsynth("weights", "import", str(ldm), "--name", "aldm-cpu", "--force", home=home)
    if imported.returncode != 0:
        raise RuntimeError(imported.stderr[-3000:])
    subject = subject_from_folder(SUBJECTS[args.held_out])
    files = {c: subject.files[parse_contrast(c)] for c in CONTRASTS}
    matrix: dict[str, dict[str, dict]] = {}
    for source in CONTRASTS:
        targets = [t for t in CONTRASTS if t != source]
        out_dir = home / "pred" / source
        t0 = time.time()
        result = mrsynth("synthesize", "--in", f"{source}={files[source]}", "--target", *targets, "--out-dir",
                         str(out_dir), "--model", "aldm-cpu", "--registration", "none", "--steps", str(args.steps),
                         "--force", threads=2, home=home)
        if result.returncode != 0:
            raise RuntimeError(f"synthesize from {source} failed:\n{result.stderr[-3000:]}")
        seconds = time.time() - t0
        matrix[source] = {}
        for target in targets:
            pred = next(out_dir.glob(f"*_desc-synth_{target}.nii.gz"))
            scored = mrsynth("evaluate", "--pred", str(pred), "--ref", str(files[target]), "--json")
            metrics = json.loads(scored.stdout)["metrics"]
            matrix[source][target] = {k: metrics[k] for k in ("psnr", "nmse", "ssim") if k in metrics}
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
        "stage_minutes_cap": args.minutes, "stage_wall_seconds": timings, "training_logs": logs,
        "ddim_steps": args.steps, "matrix": matrix, "montage": str(montage.relative_to(REPO)),
        "note": "metrics from mrsynth evaluate (both volumes scaled to their own 0.5/99.5 brain percentiles)",
    })


if __name__ == "__main__":
    main()
