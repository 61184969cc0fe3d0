#!/usr/bin/env python
"""Accuracy, time and determinism of the embedded brain extraction, and a montage of it on real scans.

Phantom (``mrsynth_cli.phantom.simulate_subject``, 1 mm, skull and scalp, 3 T unless noted): each
subject's T1, T1ce, T2, PD and FLAIR are brain-extracted with ``method="embedded"`` and scored
against the phantom's brain mask (Dice). The subjects use ``subject_rng(seed, k)``; the template uses
no random draws at all (identity transform, mean layer thicknesses), so none share its anatomy.
Goals: Dice >= 0.95 for every T1 and for T2/FLAIR, <= 60 s per 1 mm head.
One extraction is repeated to check that two runs are identical.

Real (``open_ms_longitudinal_raw/patientNN``, skipped when absent): the first study's raw T1W and
FLAIR (not skull-stripped, 0.7 x 0.7 x 3-4 mm, partial head coverage) are extracted; there is no
ground truth, so the JSON gives the brain volume and the seconds, and the montage
``benchmarks/results/brain_mask_montage.png`` draws each mask's outline (red) on three axial slices,
one coronal and one sagittal, for a visual check.

Usage: .venv/bin/python benchmarks/brain_mask.py [--subjects 3] [--quick]  ->  benchmarks/results/brain_mask.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import REAL, RESULTS, write_result  # noqa: E402

from mrsynth_cli.io.contrasts import Contrast  # noqa: E402
from mrsynth_cli.io.volume import Volume, load_volume  # noqa: E402
from mrsynth_cli.phantom import simulate_subject, subject_rng  # noqa: E402
from mrsynth_cli.preprocessing.brain_mask import EmbeddedSettings, brain_mask  # noqa: E402

GOALS = {"phantom_dice_min": 0.95, "seconds_per_1mm_head": 60.0}
DATASET = "open_ms_longitudinal_raw"
#: (lesions, field strength) of phantom subject k, cycled.
PHANTOM_KINDS = [("none", 3.0), ("tumour", 1.5), ("ms", 3.0)]
CONTRASTS = (Contrast.T1, Contrast.T1CE, Contrast.T2, Contrast.PD, Contrast.FLAIR)
QUICK_CONTRASTS = (Contrast.T1, Contrast.T2, Contrast.FLAIR)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def summary(result) -> dict:
    affine = result.details.get("affine", {})
    return {
        "method": result.method,
        "brain_ml": result.details["brain_ml"],
        "seconds": result.details["seconds"],
        "timings_s": result.details.get("timings_s"),
        "registration_kept": affine.get("chosen"),
        "registration_scores": affine.get("scores"),
        "refine": result.details.get("refine"),
    }


def benchmark_phantom(subjects: int, seed: int, contrasts: tuple[Contrast, ...], log) -> dict:
    rows = []
    determinism = None
    for index in range(subjects):
        lesions, field = PHANTOM_KINDS[index % len(PHANTOM_KINDS)]
        start = time.perf_counter()
        subject = simulate_subject(subject_rng(seed, index), 1.0, lesions, field, skull=True)
        log(f"phantom {index + 1}: {lesions}, {field:g} T, simulated in {time.perf_counter() - start:.0f} s")
        for contrast in contrasts:
            volume = Volume(
                subject.images[contrast],
                subject.affine,
                nib.Nifti1Header(),
                Path(f"phantom{index + 1}_{contrast}.nii.gz"),
                contrast,
            )
            result = brain_mask([volume], method="embedded")
            score = dice(result.mask.data > 0.5, subject.brain_mask)
            truth_ml = float(np.count_nonzero(subject.brain_mask)) / 1000.0
            rows.append(
                {
                    "subject": index + 1,
                    "lesions": lesions,
                    "field_t": field,
                    "contrast": str(contrast),
                    "dice": round(score, 4),
                    "truth_ml": round(truth_ml, 1),
                    **summary(result),
                }
            )
            details = result.details
            log(f"  {contrast}: Dice {score:.4f}, {details['brain_ml']:.0f} ml, {details['seconds']:.1f} s")
            if determinism is None:
                again = brain_mask([volume], method="embedded")
                determinism = {
                    "case": f"phantom{index + 1}_{contrast}",
                    "identical_masks": bool(np.array_equal(again.mask.data, result.mask.data)),
                }
                log(f"  repeated: identical masks {determinism['identical_masks']}")
    dices = np.array([r["dice"] for r in rows])
    seconds = np.array([r["seconds"] for r in rows])
    by_contrast = {
        str(c): {
            "dice_min": float(min(r["dice"] for r in rows if r["contrast"] == str(c))),
            "dice_mean": round(float(np.mean([r["dice"] for r in rows if r["contrast"] == str(c)])), 4),
        }
        for c in contrasts
    }
    return {
        "subjects": rows,
        "by_contrast": by_contrast,
        "dice_min": float(dices.min()),
        "dice_mean": round(float(dices.mean()), 4),
        "seconds_mean": round(float(seconds.mean()), 1),
        "seconds_max": round(float(seconds.max()), 1),
        "determinism": determinism,
        "goal_dice_met": bool(dices.min() >= GOALS["phantom_dice_min"]),
        "goal_seconds_met": bool(seconds.max() <= GOALS["seconds_per_1mm_head"]),
    }


def real_scans(root: Path) -> list[tuple[str, Path, Contrast]]:
    """The first study's raw T1W and FLAIR of every patient."""
    scans = []
    for patient in sorted((root / DATASET).glob("patient*")):
        for suffix, contrast in (("T1W", Contrast.T1), ("FLAIR", Contrast.FLAIR)):
            found = sorted(patient.glob(f"study*_{suffix}.nii.gz"))
            if found:
                scans.append((f"{patient.name} {found[0].name.split('.')[0]}", found[0], contrast))
    return scans


def benchmark_real(root: Path, montage: Path, log) -> dict:
    scans = real_scans(root)
    if not scans:
        return {"skipped": f"{root / DATASET} not found"}
    rows, panels = [], []
    for label, path, contrast in scans:
        volume = load_volume(path, contrast)
        result = brain_mask([volume], method="embedded")
        rows.append({"scan": label, "file": str(path.relative_to(root)), **summary(result)})
        panels.append((label, volume, result.mask.data > 0.5))
        log(f"  {label}: {result.details['brain_ml']:.0f} ml, {result.details['seconds']:.1f} s")
    write_outline_montage(panels, montage)
    log(f"montage: {montage}")
    return {"scans": rows, "montage": str(montage.relative_to(RESULTS.parent.parent))}


# --------------------------------------------------------------------------------------------------
# Montage: mask outlines in red on grey slices (RAS, neurological: the subject's right on the right)


def _as_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    orientation = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, orientation)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[np.argsort(orientation[:, 0])]
    return ras, spacing


def _panel(plane: np.ndarray, mask: np.ndarray, spacing, px_per_mm: float, window) -> Image.Image:
    """One slice (indexed horizontal, vertical-up) at square millimetre pixels with the mask outline."""
    low, high = window
    grey = (np.clip((plane - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
    size = (
        max(1, int(round(plane.shape[0] * spacing[0] * px_per_mm))),
        max(1, int(round(plane.shape[1] * spacing[1] * px_per_mm))),
    )
    image = Image.fromarray(np.flipud(grey.T)).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    inside = Image.fromarray(np.flipud(mask.T).astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
    inside = np.asarray(inside) > 127
    pixels = np.asarray(image).copy()
    pixels[inside & ~ndimage.binary_erosion(inside)] = (255, 40, 40)
    return Image.fromarray(pixels)


def write_outline_montage(rows: list[tuple[str, Volume, np.ndarray]], path: Path, px_per_mm: float = 1.6) -> None:
    rendered = []
    for label, volume, mask in rows:
        image, spacing = _as_ras(volume.data.astype(np.float32), volume.affine)
        inside, _ = _as_ras(mask.astype(np.uint8), volume.affine)
        window = tuple(np.percentile(image[image > 0], [0.5, 99.5]))
        voxels = np.argwhere(inside)
        centre = voxels.mean(axis=0).astype(int)
        bottom, top = voxels[:, 2].min(), voxels[:, 2].max()
        panels = [
            _panel(image[:, :, k], inside[:, :, k], spacing[[0, 1]], px_per_mm, window)
            for k in (int(bottom + f * (top - bottom)) for f in (0.25, 0.5, 0.75))
        ]
        j, i = centre[1], centre[0]
        panels.append(_panel(image[:, j, :], inside[:, j, :], spacing[[0, 2]], px_per_mm, window))
        panels.append(_panel(image[i], inside[i], spacing[[1, 2]], px_per_mm, window))
        rendered.append((label, panels))
    label_width, gap = 170, 4
    widths = [max(panels[c].width for _, panels in rendered) for c in range(5)]
    heights = [max(p.height for p in panels) for _, panels in rendered]
    canvas = Image.new("RGB", (label_width + sum(widths) + gap * 5, sum(heights) + gap * (len(rows) + 1)))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for (label, panels), height in zip(rendered, heights, strict=True):
        draw.text((4, y + 4), label, fill=(255, 255, 255))
        x = label_width
        for panel, width in zip(panels, widths, strict=True):
            canvas.paste(panel, (x + (width - panel.width) // 2, y + (height - panel.height) // 2))
            x += width + gap
        y += height + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL, help="the shared real-data folder")
    parser.add_argument("--seed", type=int, default=20240915)
    parser.add_argument("--subjects", type=int, default=3, help="phantom subjects (0: none)")
    parser.add_argument("--quick", action="store_true", help="T1, T2 and FLAIR only")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    contrasts = QUICK_CONTRASTS if args.quick else CONTRASTS
    phantom = benchmark_phantom(args.subjects, args.seed, contrasts, log) if args.subjects else {"skipped": "none"}
    real = benchmark_real(args.data, RESULTS / "brain_mask_montage.png", log)
    settings = EmbeddedSettings()
    path = write_result(
        "brain_mask",
        {
            "what": "embedded brain extraction (phantom template registration + band refinement): Dice, time",
            "goals": GOALS,
            "settings": {k: str(getattr(settings, k)) for k in settings.__dataclass_fields__},
            "seed": args.seed,
            "phantom": phantom,
            "real": real,
            "total_seconds": round(time.perf_counter() - started, 1),
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
