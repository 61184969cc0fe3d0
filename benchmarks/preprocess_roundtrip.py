"""Preprocess, then invert: does everything go back exactly onto the reference input's grid?

For each real case, :func:`mrsynth_cli.preprocessing.run.preprocess` brings the inputs to model
space (canonical orientation, optional resampling, brain crop, percentile scaling), then the
reference contrast's model-space array is sent back with the record (intensity inverse, then the
geometry steps in reverse). Reported per case and model grid:

* ``shape_equal`` / ``affine_equal``: the inverted array has the reference's shape, and the record
  carries the reference's affine (outputs are written with its header);
* ``mae_pct``: mean absolute error inside the brain mask, in percent of the scaled range
  (high - low percentile), against the native reference clipped to that range (scaling clips);
* ``max_err_pct``: the same, the largest voxel error.

With no resampling the round trip is exact up to float32 rounding; with resampling the error is
the interpolation's (linear there and back). The TCGA case (four contrasts on four grids) also
writes a montage of the inputs registered onto the FLAIR grid, for a visual check.

Usage: python benchmarks/preprocess_roundtrip.py   ->  benchmarks/results/preprocess_roundtrip.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL, RESULTS, write_result  # noqa: E402

from mrsynth_cli.io.contrasts import Contrast  # noqa: E402
from mrsynth_cli.preprocessing.run import PreprocessOptions, preprocess  # noqa: E402
from mrsynth_cli.qc.montage import write_montage  # noqa: E402

TCGA = REAL / "tcga_du_7294" / "hdbet_native_space"
CASES = {
    "tcga_du_7294 hdbet_native_space (4 grids, ref FLAIR)": {
        Contrast.FLAIR: TCGA / "TCGA-DU-7294_hdbet_native_fla.nii.gz",
        Contrast.T1: TCGA / "TCGA-DU-7294_hdbet_native_t1.nii.gz",
        Contrast.T1CE: TCGA / "TCGA-DU-7294_hdbet_native_t1c.nii.gz",
        Contrast.T2: TCGA / "TCGA-DU-7294_hdbet_native_t2.nii.gz",
    },
    "brats_gli_00001_000 (one grid, ref T1)": {
        Contrast.T1: REAL / "brats_gli_00001_000" / "BraTS-GLI-00001-000-t1n.nii.gz",
        Contrast.T2: REAL / "brats_gli_00001_000" / "BraTS-GLI-00001-000-t2w.nii.gz",
    },
}
GRIDS = {"native spacing, brain box": {}, "1.5 mm, 112x128x112": {"spacing_mm": 1.5, "model_shape": (112, 128, 112)}}


def roundtrip(inputs: dict[Contrast, Path], grid: dict, montage: Path | None) -> dict:
    started = time.perf_counter()
    result = preprocess(inputs, PreprocessOptions(**grid))
    seconds = time.perf_counter() - started
    reference = next(iter(inputs))
    record = result.record
    scale = record.intensity[str(reference)]
    back = record.to_native(scale.inverse(result.model_inputs[reference]), order=1)
    native = result.native[reference].data
    brain = result.brain_mask.data > 0.5
    # The model grid only holds the brain box (and scaling clips), so compare inside the brain.
    truth = np.clip(native, scale.low, scale.high)
    error = np.abs(back - truth)[brain] / (scale.high - scale.low) * 100
    if montage is not None:
        rows = {f"{c} on {reference} grid": v for c, v in result.native.items()}
        rows["brain mask"] = result.brain_mask
        write_montage(rows, montage)
    return {
        "shape_equal": list(back.shape) == list(result.reference.shape),
        "affine_equal": bool(np.allclose(np.asarray(record.reference_affine), result.reference.affine, atol=0)),
        "mae_pct": round(float(error.mean()), 4),
        "p99_err_pct": round(float(np.percentile(error, 99)), 3),
        "max_err_pct": round(float(error.max()), 3),
        "model_shape": list(result.model_inputs[reference].shape),
        "backends": record.backends,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    results = {}
    for name, inputs in CASES.items():
        if not all(p.exists() for p in inputs.values()):
            print(f"skipping {name}: real data missing")
            continue
        for grid_name, grid in GRIDS.items():
            montage = RESULTS / "preprocess_tcga_montage.png" if name.startswith("tcga") and not grid else None
            results[f"{name} | {grid_name}"] = out = roundtrip(inputs, grid, montage)
            print(name, "|", grid_name, out, flush=True)
    path = write_result("preprocess_roundtrip", {"cases": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
