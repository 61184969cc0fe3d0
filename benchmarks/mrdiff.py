"""MRDiff on held-out phantom subjects: PSNR/SSIM/FSIM/GMSD against the unet baseline and the Fig. 4 ablations,
clean and with Rician noise added to the inputs (the paper's motivation).

Models are checkpoint folders of ``mrsynth train`` runs on the same phantom training subjects (see the README's
MRDiff section for the commands); every model sees the same held-out subjects, slices and noise. Metrics are
computed on the model grid ([0, 1] scale, inside the brain), on ``--slices`` evenly spaced brain slices per
subject: PSNR over the brain voxels of those slices, SSIM/FSIM/GMSD as means over the slices (each cropped to
the brain's bounding box). Rician noise: ``|x + n_1 + i n_2|`` with ``n ~ N(0, sigma^2)``, sigma relative to the
[0, 1] scale, on every input.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/mrdiff.py --runs benchmarks/runs/mrdiff \\
        --data PHANTOMS [PHANTOMS_TEST] --subjects sub-07 sub-08 ... --out benchmarks/results/mrdiff.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402

from mrsynth_cli.families.mrdiff.inference import brain_slices, build_sampler, synthesize_volume  # noqa: E402
from mrsynth_cli.families.mrdiff.train import subject_acquisitions  # noqa: E402
from mrsynth_cli.metrics.fsim import fsim_axial  # noqa: E402
from mrsynth_cli.metrics.gmsd import gmsd_axial  # noqa: E402
from mrsynth_cli.metrics.image import psnr, ssim2d_axial  # noqa: E402
from mrsynth_cli.paths import cache_dir  # noqa: E402
from mrsynth_cli.registry import load_adapter  # noqa: E402
from mrsynth_cli.training.checkpoint import load_train_state, load_weights, read_checkpoint_config  # noqa: E402
from mrsynth_cli.training.data import load_training_subjects  # noqa: E402


def rician(volume: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma == 0:
        return volume
    real = volume + rng.normal(0.0, sigma, volume.shape)
    imaginary = rng.normal(0.0, sigma, volume.shape)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32)


def training_record(run: Path) -> dict:
    meta = json.loads((run / "checkpoint" / "config.json").read_text())
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    minutes = max((r.get("minutes", 0.0) for r in log), default=0.0)
    return {"step": meta["step"], "last_logged_minutes_of_last_session": round(minutes, 2),
            "training": {k: meta["training"][k] for k in ("learning_rate", "max_steps", "ema_decay", "seed")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs/mrdiff"))
    parser.add_argument("--models", nargs="+", default=["mrdiff", "no-physics", "no-consistency", "unet"])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--subjects", nargs="+", required=True, help="held-out subject IDs")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.05])
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="ema: the checkpoint's weights (EMA); raw: the last optimiser step's (train_state.pt), "
                        "for runs too short for the EMA to catch up")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mrdiff.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")

    models = {}
    for name in args.models:
        ckpt = args.runs / name / "checkpoint"
        info = read_checkpoint_config(ckpt)
        adapter = load_adapter(info.family)
        config = adapter.config_from_dict(info.config)
        if args.weights == "ema":
            weights = load_weights(ckpt / "model.safetensors")
        else:
            weights = load_train_state(ckpt)["model"]
        models[name] = (info.family, config, adapter.load_model(config, weights, device))
    reference = next(c for f, c, _ in models.values() if f == "mrdiff")
    contrasts = [reference.target_contrast, *reference.input_contrasts]
    for _, config, _ in models.values():
        assert [config.target_contrast, *config.input_contrasts] == contrasts, "models must share target and inputs"
    subjects = [s for s in load_training_subjects(args.data, contrasts, required=contrasts,
                                                  spacing_mm=reference.spacing_mm, model_shape=reference.model_shape,
                                                  cache_dir=cache_dir()) if s.subject_id in args.subjects]
    missing = set(args.subjects) - {s.subject_id for s in subjects}
    if missing:
        raise SystemExit(f"held-out subjects not found: {sorted(missing)}")
    acquisitions = subject_acquisitions(args.data, [s.subject_id for s in subjects], reference.input_contrasts)

    rows = []
    started = time.perf_counter()
    for sigma in args.noise:
        for subject in subjects:
            slices = brain_slices(subject.brain_mask)
            picked = slices[np.linspace(0, len(slices) - 1, min(args.slices, len(slices))).round().astype(int)]
            rng = np.random.default_rng([int(sigma * 1000), int(subject.subject_id.split("-")[-1])])
            inputs = {c: rician(subject.volumes[c], sigma, rng) for c in reference.input_contrasts}
            ref = subject.volumes[reference.target_contrast][..., picked]
            mask = subject.brain_mask[..., picked]
            for name, (family, config, model) in models.items():
                tic = time.perf_counter()
                if family == "mrdiff":
                    pred = synthesize_volume(
                        model, config, inputs, subject.brain_mask, acquisitions[subject.subject_id],
                        sampler=build_sampler(config, "ddim", args.steps), generator=torch.Generator().manual_seed(0),
                        device=device, slices=picked,
                    )[..., picked]
                else:
                    from mrsynth_cli.families.unet.network import predict_volume

                    pred = predict_volume(model, config, inputs, subject.brain_mask, device=device)[..., picked]
                row = {
                    "model": name, "noise_sigma": sigma, "subject": subject.subject_id,
                    "psnr": psnr(pred, ref, mask), "ssim": ssim2d_axial(pred, ref, mask),
                    "fsim": fsim_axial(pred, ref, mask), "gmsd": gmsd_axial(pred, ref, mask),
                    "seconds": round(time.perf_counter() - tic, 2),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for name in models:
        for sigma in args.noise:
            picked_rows = [r for r in rows if r["model"] == name and r["noise_sigma"] == sigma]
            summary.setdefault(name, {})[f"sigma={sigma}"] = {
                k: {"mean": round(float(np.mean([r[k] for r in picked_rows])), 4),
                    "std": round(float(np.std([r[k] for r in picked_rows])), 4)}
                for k in ("psnr", "ssim", "fsim", "gmsd")
            }
    result = {
        "benchmark": "mrdiff vs unet vs ablations on held-out phantom subjects",
        "target": str(reference.target_contrast), "inputs": [str(c) for c in reference.input_contrasts],
        "subjects": args.subjects, "slices_per_subject": args.slices, "sampler": f"ddim {args.steps} steps, eta 0",
        "noise_sigmas": args.noise, "data": [str(p) for p in args.data], "weights": args.weights,
        "models": {name: training_record(args.runs / name) for name in models},
        "summary": summary, "rows": rows, "seconds_total": round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
    }
    if args.out.parent.resolve() == (Path(__file__).parent / "results").resolve():
        path = write_result(args.out.stem, result)
    else:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        path = args.out
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
