"""Train the shipped ``unet`` baselines on the shared real data, with leave-one-subject-out validation.

For every target (T1, T1ce, T2, FLAIR) this trains one fold model per held-out subject and one
final model on all subjects, with the same recipe, then scores the fold models on their held-out
subject with the project's one scoring normalisation (`mrsynth evaluate` metrics on the native
grid, brain mask = the reference's non-zero voxels). The final models are copied into the package
(`mrsynth_cli/weights/files/`) and listed in `weights_manifest.toml` with their LOSO metrics.

The C-STAR example subject is never used, so the README demo runs on unseen data.

Usage: python benchmarks/train_shipped_unet.py [--steps 600] [--jobs 2] [--targets T1 T1ce T2 FLAIR]
Results: benchmarks/results/unet_loso.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("MRSYNTH_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
SUBJECTS = {  # subject id (as discovered) -> folder; all four contrasts, skull-stripped, one grid each
    "brats_gli_00001_000": REAL / "brats_gli_00001_000",
    "patient07": REAL / "open_ms_mni" / "patient07",
    "patient19": REAL / "open_ms_mni" / "patient19",
    "brainles_raw_bet": REAL / "tcga_du_7294" / "brainles_raw_bet",
}
RUNS = REPO / "benchmarks" / "runs" / "unet"
RECIPE = ["--channels", "32,64,128,256", "--spacing", "2", "--size", "80,96,80", "--batch-size", "8", "--seed", "0",
          "--device", "cpu", "--checkpoint-every", "100", "--validate-every", "100000"]


def mrsynth(*args: str, threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MRSYNTH_DEBUG": "1"}
    return subprocess.run([str(REPO / ".venv" / "bin" / "mrsynth"), *args], env=env, capture_output=True, text=True)


def train(target: str, held_out: str | None, steps: int) -> Path:
    name = f"{target.lower()}-{held_out or 'final'}"
    out = RUNS / name
    data = [str(SUBJECTS[s]) for s in SUBJECTS if s != held_out]
    resume = ["--resume"] if (out / "checkpoint" / "config.json").exists() else []
    started = time.time()
    result = mrsynth("train", "unet", "--data", *data, "--target", target, "--out", str(out), "--max-steps", str(steps),
                     *RECIPE, *resume)
    if result.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{result.stderr[-3000:]}")
    print(f"trained {name} in {time.time() - started:.0f} s", flush=True)
    return out / "checkpoint"


def score(target: str, held_out: str, checkpoint: Path, home: Path) -> dict:
    """Import the fold model into a scratch weights folder, synthesize the held-out subject, evaluate."""
    env_home = {"MRSYNTH_HOME": str(home)}
    os.environ.update(env_home)
    name = f"fold-{target.lower()}-{held_out}"
    mrsynth("weights", "import", str(checkpoint), "--name", name, "--force")
    from mrsynth_cli.io.contrasts import parse_contrast
    from mrsynth_cli.io.subjects import subject_from_folder

    subject = subject_from_folder(SUBJECTS[held_out])
    target_c = parse_contrast(target)
    inputs = [f"{c.value}={p}" for c, p in subject.files.items() if c != target_c]
    out = home / "pred" / f"{name}.nii.gz"
    started = time.time()
    result = mrsynth("synthesize", "--in", *inputs, "--target", target, "--out", str(out), "--model", name,
                     "--registration", "none", "--force", threads=2)
    if result.returncode != 0:
        raise RuntimeError(f"synthesize {name} failed:\n{result.stderr[-3000:]}")
    seconds = time.time() - started
    metrics = json.loads(mrsynth("evaluate", "--pred", str(out), "--ref", str(subject.files[target_c]), "--json").stdout)
    return {"held_out": held_out, "synthesize_seconds": round(seconds, 1), **metrics["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--targets", nargs="+", default=["FLAIR", "T1ce", "T2", "T1"])
    parser.add_argument("--loso-targets", nargs="+", default=None, help="targets to run LOSO folds for (default: all)")
    parser.add_argument("--ship", action="store_true", help="only copy the final models into the package + manifest")
    parser.add_argument("--update-metrics", action="store_true",
                        help="only rewrite the shipped entries' metrics from the results JSON (weights untouched)")
    parser.add_argument("--folds-only", action="store_true",
                        help="train and score only the LOSO folds, merge them into the results JSON, ship nothing")
    args = parser.parse_args()
    if args.ship:
        ship(args.targets, args.steps)
        return
    if args.update_metrics:
        update_metrics()
        return
    missing = [s for s, p in SUBJECTS.items() if not p.is_dir()]
    if missing:
        sys.exit(f"real data missing for {missing} under {REAL}")
    # Final (shipped) models first, then the leave-one-subject-out folds; reruns resume finished runs.
    loso = args.loso_targets or args.targets
    finals = [] if args.folds_only else [(t, None) for t in args.targets]
    jobs = finals + [(t, h) for t in loso for h in SUBJECTS]
    with ThreadPoolExecutor(args.jobs) as pool:
        checkpoints = dict(zip(jobs, pool.map(lambda j: train(j[0], j[1], args.steps), jobs), strict=True))
    home = RUNS / "scoring-home"
    out = REPO / "benchmarks" / "results" / "unet_loso.json"
    previous = json.loads(out.read_text())["targets"] if args.folds_only and out.exists() else {}
    results = {"recipe": RECIPE, "steps": args.steps, "subjects": list(SUBJECTS), "targets": previous}
    for target in loso:
        folds = [score(target, h, checkpoints[(target, h)], home) for h in SUBJECTS]
        keys = [k for k in folds[0] if k not in ("held_out",)]
        mean = {k: round(sum(f[k] for f in folds) / len(folds), 4) for k in keys}
        final = checkpoints.get((target, None), RUNS / f"{target.lower()}-final" / "checkpoint")
        results["targets"][target] = {"folds": folds, "mean": mean, "final_checkpoint": str(final)}
        print(target, mean, flush=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    if args.folds_only:
        update_metrics()
    else:
        ship(args.targets, args.steps)


MANIFEST_HEADER = """\
# mrsynth weights manifest: every trained model the tool can use, with what it does, how it was
# trained, how well it did, and how to verify its files. Files are safetensors (never unpickled);
# sha256 and size are checked before every load. Hub files are pinned to a 40-character revision.
# The unet entries are written by benchmarks/train_shipped_unet.py --ship.
"""


def _loso_metrics(target: str, loso: dict) -> dict:
    metrics = {"protocol": "leave-one-subject-out over the 4 training subjects, same recipe; "
               "mrsynth evaluate on the native grid (0.5/99.5 percentile scaling in the brain)"}
    if target in loso:
        metrics.update({k: v for k, v in loso[target]["mean"].items() if k != "synthesize_seconds"})
        metrics["folds"] = len(loso[target]["folds"])
    else:
        metrics["protocol"] = "not measured (leave-one-subject-out was not run for this target)"
    return metrics


def update_metrics() -> None:
    """Rewrite the ``metrics`` of the shipped unet entries from ``unet_loso.json`` (weights untouched)."""
    import tomllib

    import tomli_w

    from mrsynth_cli.weights.manifest import load_manifest, packaged_manifest_path

    loso = json.loads((REPO / "benchmarks" / "results" / "unet_loso.json").read_text())["targets"]
    manifest = REPO / "weights_manifest.toml"
    data = tomllib.loads(manifest.read_text())
    for model in data.get("model", []):
        if model["family"] == "unet" and model["outputs"][0] in loso:
            model["metrics"] = _loso_metrics(model["outputs"][0], loso)
    manifest.write_text(MANIFEST_HEADER + tomli_w.dumps(data))
    load_manifest(packaged_manifest_path())
    print(f"updated the metrics in {manifest}")


def ship(targets: list[str], steps: int) -> None:
    """Copy the final models into mrsynth_cli/weights/files and (re)write their manifest entries."""
    import tomli_w

    from mrsynth_cli.training.checkpoint import read_checkpoint_config
    from mrsynth_cli.weights.importer import manifest_entry_for
    from mrsynth_cli.weights.manifest import SCHEMA_VERSION, load_manifest, packaged_manifest_path
    from mrsynth_cli.weights.store import copy_atomic, sha256_of

    loso_path = REPO / "benchmarks" / "results" / "unet_loso.json"
    loso = json.loads(loso_path.read_text())["targets"] if loso_path.exists() else {}
    files_dir = REPO / "mrsynth_cli" / "weights" / "files"
    manifest = REPO / "weights_manifest.toml"
    import sys as _sys
    if _sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    data = tomllib.loads(manifest.read_text())
    models = {m["name"]: m for m in data.get("model", [])}
    for target in targets:
        checkpoint = RUNS / f"{target.lower()}-final" / "checkpoint"
        info = read_checkpoint_config(checkpoint)
        name = f"unet-{target.lower()}"
        destination = files_dir / f"{name}.safetensors"
        copy_atomic(checkpoint / "model.safetensors", destination)
        metrics = _loso_metrics(target, loso)
        models[name] = manifest_entry_for(
            name=name, family="unet", config=info.config, weights_path=destination.name,
            sha256=sha256_of(destination), size=destination.stat().st_size, version="0.1.0",
            licence="weights: MIT; training data: BraTS 2023 (cite), Lesjak et al. 2017 (CC-BY), TCGA via BraTS-Toolkit",
            training_data=f"{', '.join(SUBJECTS)} (real, skull-stripped; {info.step} steps, recipe {' '.join(RECIPE)})",
            metrics=metrics,
            description=f"regression UNet baseline: any subset of {'/'.join(info.config['inputs'])} -> {target}",
        )
    data = {"schema_version": SCHEMA_VERSION, "model": [models[k] for k in sorted(models)]}
    manifest.write_text(MANIFEST_HEADER + tomli_w.dumps(data))
    load_manifest(packaged_manifest_path())  # validate what was written
    print(f"shipped {targets} into {files_dir} and {manifest}")


if __name__ == "__main__":
    main()
