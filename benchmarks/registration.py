#!/usr/bin/env python
"""Accuracy, time and determinism of the embedded (SimpleITK) registration.

Real data (``open_ms_longitudinal_raw/patientNN``, skipped when absent): for every study with a
T1W or T2W image and the dataset's ``studyK_<X>_intrastudy_to_FLAIR.txt`` (an ITK transform mapping
FLAIR-space points into the moving image; Lesjak et al., Neuroinformatics 2016), the moving image's
header is moved by a known random rigid transform P (rotations up to 15° about each axis around the
image centre, translations up to 20 mm; fixed seed), then registered to the FLAIR. The recovered
fixed → moving transform is compared with ``P ∘ T_dataset`` over the FLAIR's brain voxels (threshold,
erosion, largest component, dilation, holes filled): mean and max displacement in mm.
Goals: mean <= 1.0 mm, max <= 2.0 mm, <= 60 s per pair; two runs bit-identical.

The dataset's transforms are themselves registrations (affine, so with small scalings and shears
that a rigid transform cannot follow): each pair also reports the error of the *best rigid fit* of
the dataset's transform over the same voxels, a floor for any rigid method, and the displacement
between the recovered transform and that best rigid fit.

Phantom (``mrsynth_cli.phantom.simulate_subject``, 1 mm): T1 and T2 are registered to FLAIR after
moving their header by a random rigid transform (up to 20° and 20 mm); the truth is exact.
Goal: mean <= 0.5 mm.

Usage: .venv/bin/python benchmarks/registration.py [--quick]  ->  benchmarks/results/registration.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import REAL, write_result  # noqa: E402

from mrsynth_cli.io.volume import Volume, load_volume  # noqa: E402
from mrsynth_cli.preprocessing.registration import (  # noqa: E402
    SitkSettings,
    load_transform,
    register,
    rigid_matrix,
)

GOALS = {"real_mean_mm": 1.0, "real_max_mm": 2.0, "seconds": 60.0, "phantom_mean_mm": 0.5}
DATASET = "open_ms_longitudinal_raw"


def brain_mask(volume: Volume, erode_mm: float = 6.0) -> np.ndarray:
    """A rough brain mask of a raw (not skull-stripped) FLAIR: the largest bright component once
    the scalp is cut off by an erosion, dilated back, holes filled. Skull-stripped input (a
    zero background holding most of the box) gives its non-zero voxels."""
    data = volume.data
    spacing = np.asarray(volume.spacing)
    nonzero_litres = float((data != 0).sum()) * float(np.prod(spacing)) / 1e6
    if nonzero_litres < 2.0:  # a head is 3-5 L, a stripped brain 1-1.7 L
        return data != 0
    threshold = 0.5 * float(np.median(data[data > data.mean()]))
    head = data > threshold
    core = ndimage.distance_transform_edt(head, sampling=spacing) > erode_mm
    labels, count = ndimage.label(core)
    if count == 0:
        return head
    sizes = ndimage.sum(core, labels, range(1, count + 1))
    core = labels == 1 + int(np.argmax(sizes))
    grown = ndimage.distance_transform_edt(~core, sampling=spacing) <= erode_mm
    return ndimage.binary_fill_holes(grown & (data > 0.5 * threshold))


def world_points(volume: Volume, mask: np.ndarray, step: int = 4) -> np.ndarray:
    ijk = np.argwhere(mask)[::step]
    return ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def displacement(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points @ (a[:3, :3] - b[:3, :3]).T + (a[:3, 3] - b[:3, 3]), axis=1)


def best_rigid_fit(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The rigid transform closest to ``transform`` over ``points`` (least squares; Kabsch/Umeyama)."""
    target = points @ transform[:3, :3].T + transform[:3, 3]
    p0, t0 = points.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((target - t0).T @ (points - p0))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    rigid = np.eye(4)
    rigid[:3, :3] = rotation
    rigid[:3, 3] = t0 - rotation @ p0
    return rigid


def random_rigid(rng: np.random.Generator, volume: Volume, max_deg: float, max_mm: float) -> tuple[np.ndarray, dict]:
    angles = rng.uniform(-max_deg, max_deg, 3)
    shift = rng.uniform(-max_mm, max_mm, 3)
    centre = volume.affine[:3, :3] @ ((np.asarray(volume.shape) - 1) / 2) + volume.affine[:3, 3]
    drawn = {"angles_deg": angles.round(2).tolist(), "shift_mm": shift.round(2).tolist()}
    return rigid_matrix(angles, shift, centre), drawn


def moved(volume: Volume, matrix: np.ndarray) -> Volume:
    """The same voxels with the header moved by ``matrix`` (world → world)."""
    return Volume(volume.data, matrix @ volume.affine, volume.header, volume.path, volume.contrast)


def stats(errors: np.ndarray) -> dict:
    return {"mean_mm": round(float(errors.mean()), 3), "max_mm": round(float(errors.max()), 3)}


def run_pair(
    moving: Volume, fixed: Volume, truth: np.ndarray, points: np.ndarray, dof: int, check_determinism: bool
) -> dict:
    result = register(moving, fixed, method="sitk", dof=dof)
    errors = displacement(result.transform, truth, points)
    entry = {
        "dof": dof,
        **stats(errors),
        "seconds": round(result.seconds, 2),
        "metric": round(result.metric, 5),
        "search_start_deg": result.details.get("search_start_deg"),
        "initial_translation_mm": result.details.get("initial_translation_mm"),
    }
    if dof == 12:
        entry["affine_accepted"] = result.details.get("affine_accepted")
    if check_determinism:
        again = register(moving, fixed, method="sitk", dof=dof)
        entry["deterministic"] = bool(np.array_equal(result.transform, again.transform))
        entry["seconds_second_run"] = round(again.seconds, 2)
    entry["goals_met"] = bool(
        entry["mean_mm"] <= GOALS["real_mean_mm"]
        and entry["max_mm"] <= GOALS["real_max_mm"]
        and entry["seconds"] <= GOALS["seconds"]
        and entry.get("deterministic", True)
    )
    return entry, result.transform


def real_pairs(root: Path) -> list[tuple[str, str, str]]:
    pairs = []
    for patient in sorted(p for p in root.glob("patient*") if p.is_dir()):
        for study in ("study1", "study2"):
            for contrast in ("T1W", "T2W"):
                files = [
                    patient / f"{study}_FLAIR.nii.gz",
                    patient / f"{study}_{contrast}.nii.gz",
                    patient / f"{study}_{contrast}_intrastudy_to_FLAIR.txt",
                ]
                if all(f.is_file() for f in files):
                    pairs.append((patient.name, study, contrast))
    return pairs


def benchmark_real(root: Path, seed: int, dofs: tuple[int, ...], log) -> dict:
    folder = root / DATASET
    if not folder.is_dir():
        return {"skipped": f"{folder} not found"}
    entries = []
    flair_cache: dict[tuple[str, str], tuple[Volume, np.ndarray]] = {}
    for index, (patient, study, contrast) in enumerate(real_pairs(folder)):
        if (patient, study) not in flair_cache:
            fixed = load_volume(folder / patient / f"{study}_FLAIR.nii.gz")
            flair_cache = {(patient, study): (fixed, world_points(fixed, brain_mask(fixed)))}
        fixed, points = flair_cache[(patient, study)]
        moving = load_volume(folder / patient / f"{study}_{contrast}.nii.gz")
        dataset = load_transform(folder / patient / f"{study}_{contrast}_intrastudy_to_FLAIR.txt")
        perturbation, drawn = random_rigid(np.random.default_rng([seed, index]), moving, 15.0, 20.0)
        truth = perturbation @ dataset
        rigid_floor = best_rigid_fit(dataset, points)
        entry = {
            "pair": f"{patient}/{study} {contrast} -> FLAIR",
            "fixed_grid": f"{fixed.shape} @ {'x'.join(f'{s:.2f}' for s in fixed.spacing)} mm",
            "moving_grid": f"{moving.shape} @ {'x'.join(f'{s:.2f}' for s in moving.spacing)} mm",
            "brain_points": int(len(points)),
            "perturbation": drawn,
            "dataset_transform_vs_identity": stats(displacement(dataset, np.eye(4), points)),
            "dataset_best_rigid_fit_error": stats(displacement(rigid_floor, dataset, points)),
            "runs": [],
        }
        for dof in dofs:
            run, found = run_pair(moved(moving, perturbation), fixed, truth, points, dof, check_determinism=True)
            run["vs_best_rigid_fit_of_dataset"] = stats(
                displacement(np.linalg.inv(perturbation) @ found, rigid_floor, points)
            )
            entry["runs"].append(run)
            log(
                f"{entry['pair']} dof {dof}: mean {run['mean_mm']} max {run['max_mm']} mm, {run['seconds']} s, "
                f"deterministic {run['deterministic']}"
            )
        entries.append(entry)
    summary = {}
    for dof in dofs:
        runs = [r for e in entries for r in e["runs"] if r["dof"] == dof]
        if runs:
            summary[f"dof{dof}"] = {
                "pairs": len(runs),
                "mean_of_means_mm": round(float(np.mean([r["mean_mm"] for r in runs])), 3),
                "worst_mean_mm": max(r["mean_mm"] for r in runs),
                "worst_max_mm": max(r["max_mm"] for r in runs),
                "worst_seconds": max(r["seconds"] for r in runs),
                "all_deterministic": all(r["deterministic"] for r in runs),
                "pairs_meeting_all_goals": sum(r["goals_met"] for r in runs),
            }
    return {"dataset": DATASET, "pairs": entries, "summary": summary}


def benchmark_phantom(subjects: int, seed: int, log) -> dict:
    try:
        from mrsynth_cli.phantom import simulate_subject, subject_rng
    except ImportError as exc:
        return {"skipped": f"mrsynth_cli.phantom.simulate_subject is not available ({exc})"}
    from mrsynth_cli.io.contrasts import Contrast

    entries = []
    for k in range(subjects):
        started = time.perf_counter()
        subject = simulate_subject(subject_rng(seed, k), resolution_mm=1.0, lesions="ms")
        simulate_s = time.perf_counter() - started
        header = nib.Nifti1Header()
        fixed = Volume(subject.images[Contrast.FLAIR], subject.affine, header, Path(f"phantom{k}_FLAIR"))
        points = world_points(fixed, subject.brain_mask, step=8)
        for j, contrast in enumerate((Contrast.T1, Contrast.T2)):
            moving = Volume(subject.images[contrast], subject.affine, header, Path(f"phantom{k}_{contrast}"))
            truth, drawn = random_rigid(np.random.default_rng([seed, 100 + k, j]), moving, 20.0, 20.0)
            run, _ = run_pair(moved(moving, truth), fixed, truth, points, 6, check_determinism=False)
            run["goals_met"] = bool(run["mean_mm"] <= GOALS["phantom_mean_mm"] and run["seconds"] <= GOALS["seconds"])
            entries.append(
                {
                    "pair": f"phantom subject {k} {contrast} -> FLAIR",
                    "grid": f"{fixed.shape} @ 1 mm",
                    "simulate_s": round(simulate_s, 1),
                    "perturbation": drawn,
                    **run,
                }
            )
            log(f"{entries[-1]['pair']}: mean {run['mean_mm']} max {run['max_mm']} mm, {run['seconds']} s")
    return {
        "pairs": entries,
        "summary": {
            "pairs": len(entries),
            "worst_mean_mm": max(e["mean_mm"] for e in entries),
            "worst_max_mm": max(e["max_mm"] for e in entries),
            "worst_seconds": max(e["seconds"] for e in entries),
            "pairs_meeting_goal": sum(e["goals_met"] for e in entries),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL, help="the shared real-data folder")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--subjects", type=int, default=3, help="phantom subjects (0: none)")
    parser.add_argument("--quick", action="store_true", help="rigid only (no 12-DOF runs)")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    dofs = (6,) if args.quick else (6, 12)
    real = benchmark_real(args.data, args.seed, dofs, log)
    phantom = benchmark_phantom(args.subjects, args.seed, log) if args.subjects > 0 else {"skipped": "--subjects 0"}
    settings = SitkSettings()
    path = write_result(
        "registration",
        {
            "what": "embedded SimpleITK registration: accuracy against known transforms, time, determinism",
            "goals": GOALS,
            "simpleitk": sitk.Version_VersionString(),
            "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
            "seed": args.seed,
            "real": real,
            "phantom": phantom,
            "total_seconds": round(time.perf_counter() - started, 1),
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
