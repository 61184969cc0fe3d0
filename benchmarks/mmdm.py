"""MMDM on held-out phantom subjects against the ``unet`` baseline, single-path BBDM and plain concatenation.

All four are trained on the same phantom subjects (``mrsynth phantom --seed 7 --resolution 2``, sub-01..07;
sub-08..10 held out) for the same number of optimiser steps, on the same 2 mm 80x96x80 model grid:

* ``mmdm``: ``mrsynth train mmdm`` (cpu preset; the run in ``--mmdm-run``, e.g. the one shipped, trained
  with ``--max-minutes``; its step count sets the others' budget);
* ``unet``: ``mrsynth train unet --target TOF --inputs T1 T2 FLAIR`` (batch 16 slices);
* ``bbdm``: ``mrsynth train mmdm --variant bbdm --inputs T1`` (one bridge, T1 only);
* ``concat``: ``mrsynth train mmdm --variant concat`` (one bridge from T1, T1+T2+FLAIR concatenated).

Scoring: each held-out subject is preprocessed once (the synthesize pipeline's ``preprocess``), every
model's adapter synthesizes from the same preprocessing (diffusion models: ``--steps`` bridge steps,
seed 0), the result goes back to the native grid (``record.to_native``, as ``mrsynth synthesize``) and is
scored against the phantom's TOF-MRA (``angio``) with ``evaluate_volumes(..., tof=True)`` inside the
pipeline's brain mask: PSNR/SSIM(3D)/RMSE of the volume and PSNR/SSIM/RMSE of the axial MIP, all after
the one scoring normalisation (0.5/99.5 percentiles in the mask). RMSE is in % of the [0, 1] range.

Speed: seconds per volume of the MMDM model on one subject by number of bridge steps, 2 threads, in a
fresh process (``--speed-steps``), with the load average at the time (the machine is shared).

``--ship``: copy the MMDM run's weights to ``mrsynth_cli/weights/files/mmdm-tof.safetensors`` and append
(or replace) its ``weights_manifest.toml`` entry, with the held-out figures from ``results/mmdm.json``.

Usage: python benchmarks/mmdm.py [--mmdm-run benchmarks/runs/mmdm_cpu] [--steps 10] [--speed-steps 2 5 10] [--ship]
Results: benchmarks/results/mmdm.json; axial MIP PNGs in benchmarks/results/mmdm_mip_*.png
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "benchmarks" / "runs"
PHANTOMS = RUNS / "mmdm_phantoms"
HELD_OUT = ["sub-08", "sub-09", "sub-10"]
PYTHON = sys.executable


def cli(*args: str, threads: int = 1) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "MRSYNTH_HOME": str(RUNS / "home")}
    started = time.perf_counter()
    subprocess.run([PYTHON, "-m", "mrsynth_cli", *args], check=True, env=env)
    return time.perf_counter() - started


def ensure_phantoms() -> None:
    if not (PHANTOMS / "sub-10").exists():
        cli("phantom", str(PHANTOMS), "--subjects", "10", "--seed", "7", "--resolution", "2")


def checkpoint_step(run: Path) -> int:
    path = run / "checkpoint" / "config.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def train_baselines(steps: int) -> dict[str, dict]:
    """Train (or resume to ``steps``) the three baselines; returns their run folders and wall times."""
    held = [a for s in HELD_OUT for a in ("--validation-subject", s)]
    common = [
        "--data",
        str(PHANTOMS),
        "--device",
        "cpu",
        "--seed",
        "0",
        "--max-steps",
        str(steps),
        "--validate-every",
        "100000",
        *held,
    ]
    recipes = {
        "unet": [
            "train",
            "unet",
            "--target",
            "TOF",
            "--inputs",
            "T1",
            "T2",
            "FLAIR",
            "--spacing",
            "2",
            "--size",
            "80,96,80",
            "--batch-size",
            "16",
            "--checkpoint-every",
            "50",
        ],
        "bbdm": ["train", "mmdm", "--variant", "bbdm", "--inputs", "T1"],
        "concat": ["train", "mmdm", "--variant", "concat"],
    }
    out = {}
    for name, recipe in recipes.items():
        run = RUNS / f"mmdm_baseline_{name}"
        seconds = 0.0
        done = checkpoint_step(run)
        if done < steps:
            seconds = cli(*recipe, *common, "--out", str(run), *(["--resume"] if done else []))
        out[name] = {
            "run": str(run.relative_to(REPO)),
            "steps": checkpoint_step(run),
            "train_seconds": round(seconds, 1),
        }
    return out


def load(run: Path):
    from mrsynth_cli.registry import load_adapter
    from mrsynth_cli.training.checkpoint import load_weights, read_checkpoint_config

    info = read_checkpoint_config(run / "checkpoint")
    adapter = load_adapter(info.family)
    config = adapter.config_from_dict(info.config)
    import torch

    model = adapter.load_model(config, load_weights(run / "checkpoint" / "model.safetensors"), torch.device("cpu"))
    return adapter, config, model


def score(models: dict[str, Path], steps: int) -> dict:
    import torch

    from mrsynth_cli.io.contrasts import Contrast
    from mrsynth_cli.io.mip_files import write_mip_files
    from mrsynth_cli.io.volume import load_volume
    from mrsynth_cli.metrics.evaluate import evaluate_volumes
    from mrsynth_cli.metrics.image import rmse
    from mrsynth_cli.metrics.normalise import robust_scale
    from mrsynth_cli.preprocessing.run import PreprocessOptions, preprocess

    torch.set_num_threads(2)
    loaded = {name: load(run) for name, run in models.items()}
    results: dict[str, dict] = {name: {"subjects": {}} for name in models}
    for subject in HELD_OUT:
        anat = PHANTOMS / subject / "anat"
        files = {
            Contrast.T1: anat / f"{subject}_T1w.nii.gz",
            Contrast.T2: anat / f"{subject}_T2w.nii.gz",
            Contrast.FLAIR: anat / f"{subject}_FLAIR.nii.gz",
        }
        reference = load_volume(anat / f"{subject}_angio.nii.gz")
        prep = preprocess(
            files,
            PreprocessOptions(reference=Contrast.T1, registration="none", spacing_mm=2.0, model_shape=(80, 96, 80)),
        )
        mask = prep.brain_mask.with_data(prep.brain_mask.data)
        for name, (adapter, config, model) in loaded.items():
            started = time.perf_counter()
            out = adapter.synthesize(
                model,
                config,
                prep,
                [Contrast.TOF],
                sampler=None,
                steps=steps,
                generator=torch.Generator().manual_seed(0),
                device=torch.device("cpu"),
            )
            seconds = time.perf_counter() - started
            native = prep.record.to_native(out[Contrast.TOF], order=1)
            native = np.where(prep.brain_mask.data > 0, np.clip(native, 0.0, None), 0.0).astype(np.float32)
            pred = reference.with_data(native)
            result = evaluate_volumes(pred, reference, mask, tof=True)
            brain = prep.brain_mask.data > 0
            volume_rmse = rmse(robust_scale(native, brain), robust_scale(reference.data, brain), brain)
            results[name]["subjects"][subject] = {
                "psnr": result["metrics"]["psnr"],
                "ssim3d": result["metrics"]["ssim3d"],
                "rmse_percent": 100 * volume_rmse,
                "mip_axial_psnr": result["mip"]["axial"]["psnr"],
                "mip_axial_ssim": result["mip"]["axial"]["ssim"],
                "mip_axial_rmse_percent": 100 * result["mip"]["axial"]["rmse"],
                "seconds": round(seconds, 1),
            }
            if subject == HELD_OUT[0]:
                folder = RUNS / "mmdm_bench_mips" / name
                for path in folder.glob("*"):
                    path.unlink()
                paths = write_mip_files(native, reference.affine, Path(f"{name}.nii.gz"), folder, force=True)
                (REPO / "benchmarks" / "results" / f"mmdm_mip_{name}.png").write_bytes(paths["axial"][1].read_bytes())
        if subject == HELD_OUT[0]:
            folder = RUNS / "mmdm_bench_mips" / "reference"
            for path in folder.glob("*"):
                path.unlink()
            paths = write_mip_files(
                np.where(prep.brain_mask.data > 0, reference.data, 0),
                reference.affine,
                Path("reference.nii.gz"),
                folder,
                force=True,
            )
            (REPO / "benchmarks" / "results" / "mmdm_mip_reference.png").write_bytes(paths["axial"][1].read_bytes())
    for entry in results.values():
        keys = next(iter(entry["subjects"].values())).keys()
        entry["mean"] = {k: round(float(np.mean([s[k] for s in entry["subjects"].values()])), 4) for k in keys}
    return results


def speed(run: Path, steps_list: list[int]) -> list[dict]:
    """Seconds per volume (adapter.synthesize only, preprocessing excluded) in a fresh 2-thread process."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {str(REPO / "benchmarks")!r})
from mmdm import load, PHANTOMS
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.preprocessing.run import PreprocessOptions, preprocess
torch.set_num_threads(2)
adapter, config, model = load(__import__('pathlib').Path({str(run)!r}))
anat = PHANTOMS / 'sub-08' / 'anat'
files = {{Contrast.T1: anat / 'sub-08_T1w.nii.gz', Contrast.T2: anat / 'sub-08_T2w.nii.gz',
          Contrast.FLAIR: anat / 'sub-08_FLAIR.nii.gz'}}
prep = preprocess(files, PreprocessOptions(reference=Contrast.T1, registration='none', spacing_mm=2.0,
                                           model_shape=(80, 96, 80)))
from mrsynth_cli.families.mmdm.inference import brain_window_starts
for steps in {steps_list!r}:
    load_before = open('/proc/loadavg').read().split()[0]
    t = time.perf_counter()
    adapter.synthesize(model, config, prep, [Contrast.TOF], steps=steps, generator=torch.Generator().manual_seed(0),
                       device=torch.device('cpu'))
    print(json.dumps({{'steps': steps, 'seconds': round(time.perf_counter() - t, 1),
                      'windows': len(brain_window_starts(config, prep.model_brain_mask)),
                      'load_average_before': float(load_before)}}), flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([PYTHON, "-c", code], check=True, env=env, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def ship(run: Path) -> None:
    """Package the MMDM run as ``mmdm-tof`` (the other manifest entries are left byte for byte)."""
    import tomli_w

    from mrsynth_cli.training.checkpoint import read_checkpoint_config
    from mrsynth_cli.weights.importer import manifest_entry_for
    from mrsynth_cli.weights.manifest import load_manifest, packaged_manifest_path
    from mrsynth_cli.weights.store import copy_atomic, sha256_of

    info = read_checkpoint_config(run / "checkpoint")
    results = json.loads((REPO / "benchmarks" / "results" / "mmdm.json").read_text())
    mean = results["results"]["mmdm"]["mean"]
    destination = REPO / "mrsynth_cli" / "weights" / "files" / "mmdm-tof.safetensors"
    copy_atomic(run / "checkpoint" / "model.safetensors", destination)
    entry = manifest_entry_for(
        name="mmdm-tof",
        family="mmdm",
        config=info.config,
        weights_path=destination.name,
        sha256=sha256_of(destination),
        size=destination.stat().st_size,
        version="0.1.0",
        licence="weights: MIT; training data: mrsynth phantom (simulated, MNI ICBM152 2009 tissue priors)",
        training_data=f"PHANTOM ONLY: mrsynth phantom --subjects 10 --seed 7 --resolution 2, sub-01..sub-07 "
        f"(simulated T1w/T2w/FLAIR/angio; no real TOF-MRA); {info.step} steps, --config cpu, 2 CPU threads",
        metrics={
            "protocol": f"3 held-out phantom subjects (sub-08..10), {results['scoring']['bridge_steps']} bridge steps, "
            "seed 0; mrsynth evaluate normalisation in the pipeline brain mask; benchmarks/mmdm.py",
            **{k: v for k, v in mean.items() if k != "seconds"},
        },
        description="MMDM multi-path Brownian bridge: T1/T2/FLAIR -> TOF-MRA (phantom-trained demo)",
    )
    manifest = REPO / "weights_manifest.toml"
    text = manifest.read_text()
    marker = '\n[[model]]\nname = "mmdm-tof"'
    if marker in text:  # replace our own entry: it is the last one, appended by this function
        text = text[: text.index(marker)] + "\n"
    manifest.write_text(text.rstrip("\n") + "\n\n" + tomli_w.dumps({"model": [entry]}))
    load_manifest(packaged_manifest_path())  # validate what was written
    print(f"shipped mmdm-tof ({info.step} steps) into {destination} and {manifest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmdm-run", type=Path, default=RUNS / "mmdm_cpu")
    parser.add_argument("--steps", type=int, default=10, help="bridge steps for scoring")
    parser.add_argument("--speed-steps", type=int, nargs="*", default=[2, 5, 10])
    parser.add_argument("--ship", action="store_true", help="only package the MMDM run as mmdm-tof")
    parser.add_argument("--subjects", nargs="*", default=HELD_OUT, help="held-out subjects to score")
    args = parser.parse_args()
    args.mmdm_run = args.mmdm_run.resolve()
    HELD_OUT[:] = args.subjects
    if args.ship:
        ship(args.mmdm_run)
        return
    ensure_phantoms()
    budget = checkpoint_step(args.mmdm_run)
    if budget == 0:
        raise SystemExit(f"{args.mmdm_run} has no checkpoint: train it first (mrsynth train mmdm ...)")
    mmdm_meta = json.loads((args.mmdm_run / "checkpoint" / "config.json").read_text())
    log = [json.loads(line) for line in (args.mmdm_run / "train_log.jsonl").read_text().splitlines()]
    mmdm_minutes = max((r.get("minutes", 0) for r in log), default=0)
    baselines = train_baselines(budget)
    runs = {"mmdm": args.mmdm_run, **{name: REPO / info["run"] for name, info in baselines.items()}}
    scores = score(runs, args.steps)
    speeds = speed(args.mmdm_run, args.speed_steps) if args.speed_steps else []
    path = write_result(
        "mmdm",
        {
            "data": "mrsynth phantom --subjects 10 --seed 7 --resolution 2; trained on sub-01..07, "
            f"scored on {', '.join(HELD_OUT)}",
            "budget_steps": budget,
            "training": {
                "mmdm": {
                    "run": str(args.mmdm_run.relative_to(REPO)),
                    "steps": budget,
                    "train_minutes_logged": round(mmdm_minutes, 1),
                    "config": mmdm_meta["config"],
                },
                **baselines,
            },
            "scoring": {
                "bridge_steps": args.steps,
                "seed": 0,
                "mask": "pipeline brain mask from T1/T2/FLAIR",
                "normalisation": "0.5/99.5 percentiles inside the mask, [0, 1]; RMSE in % of that range",
            },
            "results": scores,
            "speed_mmdm_seconds_per_volume": speeds,
            "notes": "training ran with OMP_NUM_THREADS=1 on a 2-core machine shared with other jobs "
            "(load average 5-8)",
        },
    )
    print(path)
    for name, entry in scores.items():
        print(name, entry["mean"])


if __name__ == "__main__":
    main()
