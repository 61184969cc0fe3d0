"""Shared fixtures: tiny real NIfTI files with RAS, LPS and oblique affines, and the real-data path."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """``$MRSYNTH_REAL_DATA`` or ``<repo>/../shared/data/real`` if it exists."""
    env = os.environ.get("MRSYNTH_REAL_DATA")
    candidate = Path(env) if env else REPO.parent / "shared" / "data" / "real"
    return candidate if candidate.is_dir() else None


@pytest.fixture
def real_data() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("real data (../shared/data/real) not present")
    return path


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, cy, cz, sx, sy, sz = np.cos(rx), np.cos(ry), np.cos(rz), np.sin(rx), np.sin(ry), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


AFFINES = {
    "ras": np.diag([1.0, 1.2, 2.5, 1.0]) + np.array([[0, 0, 0, -10], [0, 0, 0, -20], [0, 0, 0, 5], [0, 0, 0, 0]]),
    "lps": np.array([[-0.9, 0, 0, 100.0], [0, -0.9, 0, 120.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]]),
    "oblique": np.vstack(
        [np.hstack([_rotation(0.2, -0.1, 0.3) @ np.diag([1.1, 0.8, 2.0]), [[12.5], [-30.0], [7.25]]]), [0, 0, 0, 1]]
    ),
}


def blob(shape: tuple[int, int, int] = (12, 14, 10), seed: int = 0) -> np.ndarray:
    """A smooth bright ellipsoid on a zero background, plus a little noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.6
    return (inside * (100 + 10 * rng.standard_normal(shape))).astype(np.float32)


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
    dtype: type = np.float32,
) -> Path:
    image = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    image.set_qform(affine, qform_code)
    image.set_sform(affine, sform_code)
    nib.save(image, str(path))
    return path


@pytest.fixture(params=sorted(AFFINES))
def affine_name(request) -> str:
    return request.param


@pytest.fixture
def tiny_volume(tmp_path: Path, affine_name: str) -> Path:
    return write_nifti(tmp_path / f"T1_{affine_name}.nii.gz", blob(), AFFINES[affine_name])


@pytest.fixture
def tiny_pair(tmp_path: Path) -> tuple[Path, Path]:
    """T1 and T2 on one oblique grid."""
    t1 = write_nifti(tmp_path / "T1.nii.gz", blob(seed=1), AFFINES["oblique"])
    t2 = write_nifti(tmp_path / "T2.nii.gz", blob(seed=2) * 0.5 + 5 * (blob(seed=3) > 0), AFFINES["oblique"])
    return t1, t2
