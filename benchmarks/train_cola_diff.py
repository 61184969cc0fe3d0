"""Train CoLa-Diff on the shared real data and score it against the ``unet`` baseline, leave-one-subject-out.

Same four subjects, grid and scoring as ``train_shipped_unet.py`` (C-STAR never used):

1. Autoencoders: one per fold (trained on the three other subjects, reconstruction PSNR/SSIM on the
   held-out one) and one final one on all four (``mrsynth train autoencoder``, ``--config cpu``).
2. CoLa-Diff models: for every target (T1, T1ce, T2, FLAIR, from the other three) one per fold on that
   fold's autoencoder, and one final model (``mrsynth train cola-diff``).
3. Scoring: each fold model synthesizes its held-out subject (DDIM, ``--sample-steps``, one sample) and
   ``mrsynth evaluate`` scores it against the real image; the shipped recipe's ``unet`` fold model of the
   same target and held-out subject is scored in the same run with the same command, so both see the same
   normalisation. A fold model whose run folder is gone is retrained with ``--train-baselines``
   (``train_shipped_unet.train``); without it, its scores are taken from ``unet_loso.json`` (same recipe,
   command and normalisation, marked ``scored_in``).
4. ``--ablations``: the paper's Table 2 (top) on T1+T1ce+FLAIR -> T2: the full model and four models
   without one component each (``--ablate network|guidance|auto-weight|filtering``), same folds and budget.
5. ``--input-counts``: Table 2 (bottom): the T2 fold models given T1, T1+T1ce, T1+T1ce+FLAIR.
6. ``--speed``: seconds per volume, NFE and peak RSS of DDIM-50 and the fast sampler with 10 and 20 steps
   (2 threads, fresh process, the final FLAIR model on one subject).

Runs resume: finished runs are reused, interrupted or shorter ones continue with ``--resume``; scores are
memoised per model, subject, inputs and sampler (redone when the model is retrained). A model
embeds the autoencoder it was trained on (and its sha256 is in the model's config): after retraining an
autoencoder, remove the model runs of that fold.

Usage: python benchmarks/train_cola_diff.py [--ae-steps 1500] [--steps 1500] [--jobs 2] [--targets ...]
                                            [--ablations] [--input-counts] [--speed] [--smoke] [--ship]
Results: benchmarks/results/cola_diff_loso.json (``--smoke``: cola_diff_loso_smoke.json, runs/cola_diff_smoke)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_shipped_unet as unet_driver  # noqa: E402
from _util import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MRSYNTH = str(REPO / ".venv" / "bin" / "mrsynth")
SUBJECTS = unet_driver.SUBJECTS
ALL_TARGETS = ["FLAIR", "T1ce", "T2", "T1"]
ABLATIONS = ["network", "guidance", "auto-weight", "filtering"]
INPUT_COUNTS = {"T1": ["T1"], "T1+T1ce": ["T1", "T1ce"], "T1+T1ce+FLAIR": ["T1", "T1ce", "FLAIR"]}


class Run:
    """Settings shared by every job of one invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = REPO / "benchmarks" / "runs" / ("cola_diff_smoke" if args.smoke else "cola_diff")
        self.threads = 1 if args.jobs > 1 else 2
        self.extra = ["--guidance-subsets", "all"] if args.smoke else []

    def mrsynth(self, *args: str, home: Path | None = None, threads: int | None = None) -> subprocess.CompletedProcess:
        threads = threads or self.threads
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MRSYNTH_DEBUG": "1"}
        if home is not None:
            env["MRSYNTH_HOME"] = str(home)
        return subprocess.run([MRSYNTH, *args], env=env, capture_output=True, text=True)

    def data_for(self, held_out: str | None) -> list[str]:
        return [str(SUBJECTS[s]) for s in SUBJECTS if s != held_out]


def _resume(out: Path) -> list[str]:
    return ["--resume"] if (out / "checkpoint" / "config.json").exists() else []


def _finished(out: Path, steps: int | None = None) -> bool:
    """Whether the run in ``out`` ended normally (and, if ``steps`` is given, reached that many steps)."""
    path = out / "checkpoint" / "config.json"
    if not path.exists():
        return False
    meta = json.loads(path.read_text())
    return bool(meta.get("training", {}).get("final")) and (steps is None or int(meta.get("step", 0)) >= steps)


def train_autoencoder(run: Run, held_out: str | None) -> Path:
    out = run.root / f"ae-{held_out or 'final'}"
    if not _finished(out, run.args.ae_steps):
        validation = ["--validation-subject", held_out, "--validate-every", "1000000"] if held_out else []
        started = time.time()
        # Every subject is given; --validation-subject keeps the held-out one out of training (and scores it).
        result = run.mrsynth("train", "autoencoder", "--data", *run.data_for(None), "--out", str(out), "--config",
                             "cpu", "--max-steps", str(run.args.ae_steps), "--seed", "0", "--device", "cpu",
                             *validation, *_resume(out))
        if result.returncode != 0:
            raise RuntimeError(f"autoencoder {out.name} failed:\n{result.stderr[-3000:]}")
        print(f"trained {out.name} in {time.time() - started:.0f} s", flush=True)
    return out / "checkpoint"


def train_model(run: Run, target: str, held_out: str | None, ablate: str | None = None) -> Path:
    name = f"{target.lower()}-{held_out or 'final'}" + (f"-no-{ablate}" if ablate else "")
    out = run.root / name
    if not _finished(out, run.args.steps):
        ae = run.root / f"ae-{held_out or 'final'}" / "checkpoint"
        started = time.time()
        result = run.mrsynth("train", "cola-diff", "--data", *run.data_for(held_out), "--target", target,
                             "--autoencoder", str(ae), "--out", str(out), "--config", "cpu", "--max-steps",
                             str(run.args.steps), "--seed", "0", "--device", "cpu",
                             *(["--ablate", ablate] if ablate else []), *run.extra, *_resume(out))
        if result.returncode != 0:
            raise RuntimeError(f"cola-diff {name} failed:\n{result.stderr[-3000:]}")
        print(f"trained {name} in {time.time() - started:.0f} s", flush=True)
    return out / "checkpoint"


def unet_checkpoint(target: str, held_out: str, train: bool = True) -> Path | None:
    """The unet baseline fold model of the shipped recipe (trained now if its run is missing and ``train``)."""
    checkpoint = unet_driver.RUNS / f"{target.lower()}-{held_out}" / "checkpoint"
    if not _finished(checkpoint.parent):
        if not train:
            return None
        checkpoint = unet_driver.train(target, held_out, 600)
    return checkpoint


def score(run: Run, checkpoint: Path, name: str, target: str, held_out: str, inputs: list[str] | None = None,
          sampler: list[str] | None = None) -> dict:
    """Import into a scratch weights folder, synthesize the held-out subject, evaluate against the real image."""
    from mrsynth_cli.io.contrasts import parse_contrast
    from mrsynth_cli.io.subjects import subject_from_folder

    home = run.root / "scoring-home"
    key = "_".join([name, held_out, *(inputs or ["all"]), *(sampler or [])])
    memo = home / "scores" / f"{key}.json"
    weights = checkpoint / "model.safetensors"
    if memo.exists() and memo.stat().st_mtime > weights.stat().st_mtime:
        return json.loads(memo.read_text())  # scored already, and the model has not been retrained since
    imported = run.mrsynth("weights", "import", str(checkpoint), "--name", name, "--force", home=home)
    if imported.returncode != 0:
        raise RuntimeError(f"import {name} failed:\n{imported.stderr[-3000:]}")
    subject = subject_from_folder(SUBJECTS[held_out])
    target_c = parse_contrast(target)
    wanted = [parse_contrast(c) for c in inputs] if inputs else [c for c in subject.files if c != target_c]
    given = [f"{c.value}={subject.files[c]}" for c in wanted]
    out = home / "pred" / f"{name}.nii.gz"
    started = time.time()
    result = run.mrsynth("synthesize", "--in", *given, "--target", target, "--out", str(out), "--model", name,
                         "--registration", "none", "--force", *(sampler or []), home=home)
    if result.returncode != 0:
        raise RuntimeError(f"synthesize {name} failed:\n{result.stderr[-3000:]}")
    seconds = time.time() - started
    evaluated = run.mrsynth("evaluate", "--pred", str(out), "--ref", str(subject.files[target_c]), "--json")
    metrics = json.loads(evaluated.stdout)["metrics"]
    inputs_used = [c.value for c in wanted]
    scored = {"held_out": held_out, "inputs": inputs_used, "synthesize_seconds": round(seconds, 1), **metrics}
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps(scored))
    return scored


def _mean(folds: list[dict]) -> dict:
    keys = [k for k, v in folds[0].items() if isinstance(v, (int, float))]
    return {k: round(sum(f[k] for f in folds) / len(folds), 4) for k in keys}


def _autoencoder_metrics(run: Run, held_out: str) -> dict:
    log = run.root / f"ae-{held_out}" / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    validations = [r["validation"] for r in records if "validation" in r]
    return validations[-1] if validations else {}


def speed(run: Run, checkpoint: Path) -> dict:
    """Seconds per volume, NFE and peak RSS of three sampler settings, 2 threads, fresh processes."""
    from mrsynth_cli.io.subjects import subject_from_folder

    home = run.root / "scoring-home"
    run.mrsynth("weights", "import", str(checkpoint), "--name", "speed-flair", "--force", home=home)
    held = next(iter(SUBJECTS))
    subject = subject_from_folder(SUBJECTS[held])
    given = [f"{c.value}={p}" for c, p in subject.files.items() if c.value != "FLAIR"]
    cases = {"ddim-50": ["--sampler", "ddim", "--steps", "50"], "fast-10": ["--sampler", "fast", "--steps", "10"],
             "fast-20": ["--sampler", "fast", "--steps", "20"]}
    out = {}
    for name, options in cases.items():
        path = home / "pred" / f"speed-{name}.nii.gz"
        measured = run_measured([MRSYNTH, "synthesize", "--in", *given, "--target", "flair", "--out", str(path),
                                 "--model", "speed-flair", "--registration", "none", "--force", *options],
                                threads=2, env={"MRSYNTH_HOME": str(home)})
        if measured["rc"] != 0:
            raise RuntimeError(f"speed {name} failed:\n{measured['stderr']}")
        out[name] = {"seconds_per_volume": measured["seconds"], "peak_rss_gib": measured["peak_rss_gib"],
                     "nfe_per_slice": int(options[-1]), "subject": held}
        print("speed", name, out[name], flush=True)
    return out


LICENCE = "weights: MIT; training data: BraTS 2023 (cite), Lesjak et al. 2017 (CC-BY), TCGA via BraTS-Toolkit"


def _loso_metrics(target: str, loso: dict) -> dict:
    metrics = {"protocol": "leave-one-subject-out over the 4 training subjects, same recipe (fold autoencoders "
               "trained without the held-out subject); mrsynth evaluate on the native grid (0.5/99.5 percentile "
               "scaling in the brain); DDIM " + str(loso.get("sampler", ["", "", "", "?"])[-1]) + " steps, one sample"}
    found = loso.get("targets", {}).get(target)
    if found:
        metrics.update({k: v for k, v in found["cola_diff"]["mean"].items() if k != "synthesize_seconds"})
        metrics["folds"] = len(found["cola_diff"]["folds"])
        metrics["unet_baseline_same_run"] = {k: v for k, v in found["unet"]["mean"].items()
                                             if k in ("psnr", "ssim3d", "ssim2d", "nmse")}
    else:
        metrics["protocol"] = "not measured (leave-one-subject-out was not run for this target)"
    return metrics


def ship(run: Run, targets: list[str]) -> None:
    """Copy the final models into mrsynth_cli/weights/files and (re)write their manifest entries.

    An entry whose leave-one-subject-out scores are below the unet baseline's on PSNR or SSIM (3D) is
    marked ``automatic = false``: shipped for study and ``--model``, never picked by default.
    """
    import tomllib

    import tomli_w

    from mrsynth_cli.training.checkpoint import read_checkpoint_config
    from mrsynth_cli.weights.importer import manifest_entry_for
    from mrsynth_cli.weights.manifest import SCHEMA_VERSION, load_manifest, packaged_manifest_path
    from safetensors.torch import load_file, save_file

    from mrsynth_cli.weights.store import sha256_of

    loso_path = REPO / "benchmarks" / "results" / "cola_diff_loso.json"
    loso = json.loads(loso_path.read_text()) if loso_path.exists() else {}
    files_dir = REPO / "mrsynth_cli" / "weights" / "files"
    manifest = REPO / "weights_manifest.toml"
    text = manifest.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = tomllib.loads(text)
    models = {m["name"]: m for m in data.get("model", [])}
    for target in targets:
        checkpoint = run.root / f"{target.lower()}-final" / "checkpoint"
        info = read_checkpoint_config(checkpoint)
        name = f"cola-diff-{target.lower()}"
        destination = files_dir / f"{name}.safetensors"
        # float16 storage halves the package (load_state_dict copies into float32 parameters); the
        # network's output changes by the amount measured in README's CoLa-Diff section.
        weights = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(checkpoint / "model.safetensors").items()}
        tmp = destination.with_suffix(".tmp")
        save_file(weights, str(tmp))
        tmp.replace(destination)
        models[name] = manifest_entry_for(
            name=name, family="cola-diff", config=info.config, weights_path=destination.name,
            sha256=sha256_of(destination), size=destination.stat().st_size, version="0.1.0", licence=LICENCE,
            training_data=f"{', '.join(SUBJECTS)} (real, skull-stripped; autoencoder {run.args.ae_steps} steps, "
                          f"model {info.step} steps, --config cpu --seed 0, benchmarks/train_cola_diff.py)",
            metrics=_loso_metrics(target, loso),
            description=f"CoLa-Diff latent diffusion: any subset of {'/'.join(info.config['inputs'])} -> {target}",
        )
        found = loso.get("targets", {}).get(target)
        beats = found is not None and all(
            found["cola_diff"]["mean"][k] >= found["unet"]["mean"][k] for k in ("psnr", "ssim3d"))
        if not beats:
            models[name]["automatic"] = False
    data = {"schema_version": SCHEMA_VERSION, "model": [models[k] for k in sorted(models)]}
    manifest.write_text(header + tomli_w.dumps(data))
    load_manifest(packaged_manifest_path())  # validate what was written
    print(f"shipped {targets} into {files_dir} and {manifest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ae-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sample-steps", type=int, default=20, help="DDIM steps when scoring")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--targets", nargs="+", default=ALL_TARGETS)
    parser.add_argument("--ablations", action="store_true", help="also the Table 2 (top) ablations on T2")
    parser.add_argument("--input-counts", action="store_true", help="also the Table 2 (bottom) input-count table")
    parser.add_argument("--speed", action="store_true", help="also sampling speed of the final FLAIR model")
    parser.add_argument("--smoke", action="store_true",
                        help="3 steps, FLAIR, one fold, masks from all inputs: checks the plumbing only")
    parser.add_argument("--train-baselines", action="store_true",
                        help="retrain missing unet fold models (else their scores come from unet_loso.json)")
    parser.add_argument("--finals-only", action="store_true",
                        help="only train the final (shipped) models of --targets, one after the other, no folds")
    parser.add_argument("--ship", action="store_true",
                        help="only copy the final models into the package and the manifest, with their LOSO metrics")
    args = parser.parse_args()
    if args.ship:
        ship(Run(args), args.targets)
        return
    if args.smoke:
        args.ae_steps, args.steps, args.sample_steps, args.targets = 3, 3, 2, ["FLAIR"]
    missing = [s for s, p in SUBJECTS.items() if not p.is_dir()]
    if missing:
        sys.exit(f"real data missing for {missing} under {unet_driver.REAL}")
    run = Run(args)
    folds = list(SUBJECTS)[:1] if args.smoke else list(SUBJECTS)
    finals = [] if args.smoke else [None]
    if args.finals_only:
        for target in args.targets:
            train_autoencoder(run, None)
            train_model(run, target, None)
        return
    pool = ThreadPoolExecutor(args.jobs)
    list(pool.map(lambda h: train_autoencoder(run, h), [*finals, *folds]))
    jobs = [(t, h, None) for t in args.targets for h in [*finals, *folds]]
    if args.ablations:
        jobs += [("T2", h, a) for a in ABLATIONS for h in folds]
    if (args.ablations or args.input_counts) and "T2" not in args.targets:
        jobs += [("T2", h, None) for h in folds]
    checkpoints = dict(zip(jobs, pool.map(lambda j: train_model(run, *j), jobs), strict=True))
    pairs = [(t, h) for t in args.targets for h in folds]
    baselines = dict(zip(pairs, pool.map(lambda th: unet_checkpoint(*th, train=args.train_baselines), pairs),
                         strict=True))
    stored_unet = REPO / "benchmarks" / "results" / "unet_loso.json"
    stored_unet = json.loads(stored_unet.read_text())["targets"] if stored_unet.exists() else {}
    sampler = ["--sampler", "ddim", "--steps", str(args.sample_steps)]
    results: dict = {
        "protocol": "leave-one-subject-out over the 4 real subjects; mrsynth evaluate on the native grid "
                    "(0.5/99.5 percentile scaling in the brain) for cola-diff and the unet baseline alike",
        "config": "cpu", "ae_steps": args.ae_steps, "steps": args.steps, "sampler": sampler, "subjects": list(SUBJECTS),
        "autoencoder": {h: _autoencoder_metrics(run, h) for h in folds}, "targets": {},
    }
    for target in args.targets:
        cola = [score(run, checkpoints[(target, h, None)], f"cola-{target.lower()}-{h}", target, h, sampler=sampler)
                for h in folds]
        unet = [score(run, baselines[(target, h)], f"unet-{target.lower()}-{h}", target, h)
                for h in folds if baselines[(target, h)] is not None]
        if len(unet) < len(folds) and not args.smoke:
            # Fold models not kept (benchmarks/runs is not committed) and not retrained (--train-baselines):
            # the scores of the run that trained them, same recipe, command and normalisation.
            earlier = {f["held_out"]: f for f in stored_unet.get(target, {}).get("folds", [])}
            unet = [{**earlier[h], "scored_in": "unet_loso.json"} for h in folds if h in earlier]
        mean_cola, mean_unet = _mean(cola), _mean(unet) if unet else {}
        delta = {k: round(mean_cola[k] - mean_unet[k], 4) for k in mean_cola if k in mean_unet}
        results["targets"][target] = {"cola_diff": {"folds": cola, "mean": mean_cola},
                                      "unet": {"folds": unet, "mean": mean_unet}, "cola_minus_unet": delta}
        print(target, "cola-diff", mean_cola, "unet", mean_unet, flush=True)
    if args.ablations:
        table = {"full": _mean([score(run, checkpoints[("T2", h, None)], f"cola-t2-{h}", "T2", h, sampler=sampler)
                                for h in folds])}
        for ablate in ABLATIONS:
            table[f"without {ablate}"] = _mean([
                score(run, checkpoints[("T2", h, ablate)], f"cola-t2-{h}-no-{ablate}", "T2", h, sampler=sampler)
                for h in folds])
        results["ablations_T2"] = table
    if args.input_counts:
        results["input_counts_T2"] = {
            label: _mean([score(run, checkpoints[("T2", h, None)], f"cola-t2-{h}", "T2", h, inputs, sampler)
                          for h in folds])
            for label, inputs in INPUT_COUNTS.items()
        }
    if args.speed and ("FLAIR", None, None) in checkpoints:
        results["speed"] = speed(run, checkpoints[("FLAIR", None, None)])
    name = "cola_diff_loso_smoke.json" if args.smoke else "cola_diff_loso.json"
    out = REPO / "benchmarks" / "results" / name
    if out.exists():  # a run for some targets (or tables) keeps what earlier runs measured for the others
        earlier = json.loads(out.read_text())
        if (earlier.get("steps"), earlier.get("ae_steps"), earlier.get("sampler")) == (args.steps, args.ae_steps, sampler):
            results["targets"] = {**earlier.get("targets", {}), **results["targets"]}
            for table in ("ablations_T2", "input_counts_T2", "speed"):
                if table in earlier and table not in results:
                    results[table] = earlier[table]
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
