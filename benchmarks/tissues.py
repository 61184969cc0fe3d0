#!/usr/bin/env python
"""Accuracy and time of the embedded tissue segmentation (N4 + HMRF-EM + abnormal class).

Phantom (``mrsynth_cli.phantom.simulate_subject``, 1 mm, with skull; the true brain mask is given so
that only the segmentation is measured): Dice of the hard labels against the phantom's labels
(CSF, GM, WM) inside the brain, and inside the brain outside the true lesions (where tissue classes
are defined), for T1 alone and for T1 + T2 + FLAIR, on subjects with MS lesions and with a tumour;
the abnormal class is scored against the phantom's lesion mask.
Goals: Dice WM >= 0.90, GM >= 0.85, CSF >= 0.80; <= 60 s per 1 mm volume.

Real data (``open_ms_mni/patientNN``, skipped when absent): skull-stripped T1, T2 and FLAIR in MNI
space (the brain mask is the T1's non-zero voxels); the abnormal class against the dataset's
consensus lesion mask (``GOLD_STANDARD``): Dice, volumes, seconds. There is no tissue truth.

Usage: .venv/bin/python benchmarks/tissues.py  ->  benchmarks/results/tissues.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import REAL, write_result  # noqa: E402

from mrsynth_cli.io.contrasts import Contrast  # noqa: E402
from mrsynth_cli.io.volume import Volume, load_volume  # noqa: E402
from mrsynth_cli.preprocessing.tissues import CLASS_NAMES, AbnormalSettings, HmrfSettings, segment_tissues  # noqa: E402

GOALS = {"dice": {"WM": 0.90, "GM": 0.85, "CSF": 0.80}, "seconds_per_volume": 60.0}
DATASET = "open_ms_mni"
REAL_CHANNELS = {"T1": Contrast.T1, "T2": Contrast.T2, "FLAIR": Contrast.FLAIR}
PHANTOM_CHANNELS = {"T1": [Contrast.T1], "T1+T2+FLAIR": [Contrast.T1, Contrast.T2, Contrast.FLAIR]}
#: (lesions, subject index) of the phantom subjects.
PHANTOM_SUBJECTS = (("ms", 0), ("ms", 1), ("tumour", 0), ("tumour", 1))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = float(a.sum() + b.sum())
    return round(2.0 * float((a & b).sum()) / total, 4) if total else 1.0


def segment(volumes: list[Volume], brain: Volume) -> tuple[object, float]:
    started = time.perf_counter()
    result = segment_tissues(volumes, brain, method="embedded")
    return result, round(time.perf_counter() - started, 1)


def benchmark_phantom(subjects: int, seed: int, log) -> dict:
    from mrsynth_cli.phantom import simulate_subject, subject_rng
    from mrsynth_cli.phantom.tissues import Tissue

    entries = []
    for lesions, index in PHANTOM_SUBJECTS[:subjects]:
        started = time.perf_counter()
        subject = simulate_subject(subject_rng(seed, index), resolution_mm=1.0, lesions=lesions)
        simulate_s = round(time.perf_counter() - started, 1)
        header = nib.Nifti1Header()
        brain = Volume(subject.brain_mask.astype(np.uint8), subject.affine, header, Path("brain_mask"))
        inside = subject.brain_mask
        truth = {name: (subject.labels == int(t)) & inside for name, t in zip(
            CLASS_NAMES, (Tissue.CSF, Tissue.GM, Tissue.WM), strict=True)}
        for setup, contrasts in PHANTOM_CHANNELS.items():
            volumes = [
                Volume(subject.images[c], subject.affine, header, Path(f"phantom_{lesions}{index}_{c.value}"), c)
                for c in contrasts
            ]
            result, seconds = segment(volumes, brain)
            labels = result.labels.data
            scores = {name: dice((labels == k) & inside, truth[name]) for k, name in enumerate(CLASS_NAMES, start=1)}
            # Tissue classes are undefined inside lesions (the truth labels them as lesion tissue).
            normal = inside & ~subject.lesion_mask
            outside = {
                name: dice((labels == k) & normal, truth[name] & normal) for k, name in enumerate(CLASS_NAMES, start=1)
            }
            entry = {
                "subject": f"{lesions} {index}",
                "channels": setup,
                "grid": f"{subject.shape} @ 1 mm",
                "brain_voxels": int(inside.sum()),
                "simulate_s": simulate_s,
                "dice": scores,
                "dice_outside_lesions": outside,
                "seconds": seconds,
                "timings_s": result.details["timings_s"],
                "goals_met": bool(
                    all(scores[k] >= v for k, v in GOALS["dice"].items()) and seconds <= GOALS["seconds_per_volume"]
                ),
                "goals_met_outside_lesions": bool(
                    all(outside[k] >= v for k, v in GOALS["dice"].items()) and seconds <= GOALS["seconds_per_volume"]
                ),
            }
            if result.abnormal is not None:
                found = result.abnormal.data > 0
                entry["abnormal"] = {
                    "dice": dice(found, subject.lesion_mask),
                    "found_ml": round(float(found.sum()) / 1000.0, 2),
                    "true_ml": round(float(subject.lesion_mask.sum()) / 1000.0, 2),
                }
            entries.append(entry)
            log(
                f"phantom {lesions} {index} {setup}: dice {scores}, outside lesions {outside}, "
                f"abnormal {entry.get('abnormal')}, {seconds} s"
            )
    summary = {}
    for setup in PHANTOM_CHANNELS:
        runs = [e for e in entries if e["channels"] == setup]
        summary[setup] = {
            "min_dice": {name: min(e["dice"][name] for e in runs) for name in CLASS_NAMES},
            "mean_dice": {name: round(float(np.mean([e["dice"][name] for e in runs])), 4) for name in CLASS_NAMES},
            "min_dice_outside_lesions": {
                name: min(e["dice_outside_lesions"][name] for e in runs) for name in CLASS_NAMES
            },
            "worst_seconds": max(e["seconds"] for e in runs),
            "runs_meeting_all_goals": sum(e["goals_met"] for e in runs),
            "runs_meeting_all_goals_outside_lesions": sum(e["goals_met_outside_lesions"] for e in runs),
            "runs": len(runs),
        }
        if any("abnormal" in e for e in runs):
            summary[setup]["abnormal_dice"] = {e["subject"]: e["abnormal"]["dice"] for e in runs}
    return {"subjects": entries, "summary": summary}


def benchmark_real(root: Path, log) -> dict:
    folder = root / DATASET
    patients = sorted(p for p in folder.glob("patient*") if p.is_dir()) if folder.is_dir() else []
    if not patients:
        return {"skipped": f"{folder} not found"}
    entries = []
    for patient in patients:
        files = {name: next(iter(sorted(patient.glob(f"{name}_*.nii.gz"))), None) for name in REAL_CHANNELS}
        gold_file = next(iter(sorted(patient.glob("GOLD_STANDARD*.nii.gz"))), None)
        if gold_file is None or any(f is None for f in files.values()):
            entries.append({"patient": patient.name, "skipped": "missing T1, T2, FLAIR or GOLD_STANDARD"})
            continue
        volumes = [load_volume(files[name], contrast) for name, contrast in REAL_CHANNELS.items()]
        brain = volumes[0].with_data((volumes[0].data != 0).astype(np.uint8))
        gold = load_volume(gold_file, is_mask=True).data > 0.5
        result, seconds = segment(volumes, brain)
        found = result.abnormal.data > 0
        voxel_ml = float(np.prod(volumes[0].spacing)) / 1000.0
        entry = {
            "patient": patient.name,
            "channels": "+".join(REAL_CHANNELS),
            "brain_voxels": int(brain.data.sum()),
            "abnormal_dice": dice(found, gold),
            "abnormal_ml": round(float(found.sum()) * voxel_ml, 2),
            "gold_ml": round(float(gold.sum()) * voxel_ml, 2),
            "true_positive_ml": round(float((found & gold).sum()) * voxel_ml, 2),
            "gold_voxels_labelled": {
                name: int((gold & (result.labels.data == k)).sum())
                for k, name in enumerate((*CLASS_NAMES, "abnormal"), start=1)
            },
            "tissue_ml": {name: c["volume_ml"] for name, c in result.details["classes"].items()},
            "seconds": seconds,
            "timings_s": result.details["timings_s"],
        }
        entries.append(entry)
        log(
            f"{patient.name}: abnormal dice {entry['abnormal_dice']} "
            f"({entry['abnormal_ml']} ml vs {entry['gold_ml']} ml), {seconds} s"
        )
    scored = [e for e in entries if "abnormal_dice" in e]
    return {
        "dataset": DATASET,
        "patients": entries,
        "summary": {
            "abnormal_dice": {e["patient"]: e["abnormal_dice"] for e in scored},
            "worst_seconds": max((e["seconds"] for e in scored), default=None),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL, help="the shared real-data folder")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--subjects", type=int, default=len(PHANTOM_SUBJECTS), help="phantom subjects (0: none)")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    phantom = benchmark_phantom(args.subjects, args.seed, log) if args.subjects > 0 else {"skipped": "--subjects 0"}
    real = benchmark_real(args.data, log)
    path = write_result(
        "tissues",
        {
            "what": "embedded tissue segmentation (N4 + HMRF-EM + abnormal class): Dice against truth, time",
            "goals": GOALS,
            "hmrf_settings": vars(HmrfSettings()),
            "abnormal_settings": vars(AbnormalSettings()),
            "seed": args.seed,
            "phantom": phantom,
            "real": real,
            "total_seconds": round(time.perf_counter() - started, 1),
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
