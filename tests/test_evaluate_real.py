"""Evaluation on a real BraTS case (t1n scored against t2w), checked against an independent computation.

The data live in ``shared/data/real`` beside the repository (or where ``MRSYNTH_REAL_DATA`` points);
the test is skipped when they are absent.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrsynth_cli.metrics.evaluate import evaluate_files

pytestmark = pytest.mark.real_data

CASE = "brats_gli_00001_000"
#: Seconds the evaluation of one 240×240×155 pair may take here (the target is well under 30 s on 2 cores).
TIME_LIMIT_S = 60.0


def _real_data_root() -> Path | None:
    candidates = []
    if os.environ.get("MRSYNTH_REAL_DATA"):
        candidates.append(Path(os.environ["MRSYNTH_REAL_DATA"]))
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real")
    for root in candidates:
        if (root / CASE).is_dir():
            return root
    return None


@pytest.fixture(scope="module")
def case_dir() -> Path:
    root = _real_data_root()
    if root is None:
        pytest.skip(f"real data {CASE} not found (set MRSYNTH_REAL_DATA or provide ../shared/data/real)")
    return root / CASE


@pytest.fixture(scope="module")
def evaluated(case_dir: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    result = evaluate_files(case_dir / "BraTS-GLI-00001-000-t1n.nii.gz", case_dir / "BraTS-GLI-00001-000-t2w.nii.gz")
    return result, time.perf_counter() - start


def _independent_psnr(pred_path: Path, ref_path: Path) -> tuple[float, int]:
    """PSNR written from the documented normalisation with plain numpy (no mrsynth code)."""
    pred = np.asarray(nib.load(str(pred_path)).get_fdata(dtype=np.float32), dtype=np.float64)
    ref = np.asarray(nib.load(str(ref_path)).get_fdata(dtype=np.float32), dtype=np.float64)
    # BraTS volumes are skull-stripped: >= 5 % of the reference's voxels sit at its minimum, so the
    # documented default mask is "reference > minimum".
    assert np.mean(ref == ref.min()) >= 0.05
    mask = ref > ref.min()

    def scale(volume: np.ndarray) -> np.ndarray:
        low, high = np.percentile(volume[mask], [0.5, 99.5])
        return np.clip((volume - low) / (high - low), 0.0, 1.0)

    mse = np.mean((scale(pred)[mask] - scale(ref)[mask]) ** 2)
    return 10.0 * math.log10(1.0 / mse), int(mask.sum())


def test_real_pair_psnr_matches_independent_computation(case_dir: Path, evaluated):
    result, _ = evaluated
    expected, voxels = _independent_psnr(
        case_dir / "BraTS-GLI-00001-000-t1n.nii.gz", case_dir / "BraTS-GLI-00001-000-t2w.nii.gz"
    )
    assert result["metrics"]["psnr"] == pytest.approx(expected, abs=1e-6)
    assert result["mask_voxels"] == voxels
    assert result["mask"].startswith("auto (")


def test_real_pair_metrics_are_sane_and_fast(evaluated):
    result, seconds = evaluated
    metrics = result["metrics"]
    assert all(type(v) is float and math.isfinite(v) for v in metrics.values())
    assert 0.0 < metrics["fsim"] < 1.0 and 0.0 < metrics["gmsd"] < 1.0
    assert -1.0 <= metrics["ssim3d"] <= 1.0 and -1.0 <= metrics["ssim2d_axial"] <= 1.0
    assert metrics["mae"] > 0 and metrics["nmse"] > 0
    assert "mip" not in result  # t2w is not TOF
    assert seconds < TIME_LIMIT_S, f"evaluation took {seconds:.1f} s"
