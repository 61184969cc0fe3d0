"""Tiny subjects and a tiny trained unet for engine tests (real files, real training, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import write_nifti

SHAPE = (28, 30, 24)
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -40.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])  # LAS, 2 mm


def head(seed: int) -> dict[str, np.ndarray]:
    """Brain-like ellipsoid with a 'white matter' core and 'CSF' ventricles; contrast-specific intensities."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    radius = (grid**2 / np.array([0.8, 0.85, 0.75])[:, None, None, None] ** 2).sum(0)
    brain = radius < 1.0
    wm = radius < 0.45 + 0.05 * rng.random()
    csf = ((grid[0] ** 2 + (grid[1] / 2) ** 2 + (grid[2] * 1.5) ** 2) < 0.04) & brain
    values = {"T1": (60, 100, 20), "T2": (80, 50, 150), "FLAIR": (70, 55, 10)}
    out = {}
    for contrast, (gm_v, wm_v, csf_v) in values.items():
        image = np.where(brain, gm_v, 0.0)
        image = np.where(wm, wm_v, image)
        image = np.where(csf, csf_v, image)
        image = image * (1 + 0.03 * rng.standard_normal(SHAPE)) * brain
        out[contrast] = image.astype(np.float32)
    return out


def make_subjects(root: Path, n: int = 3) -> list[Path]:
    folders = []
    for i in range(n):
        folder = root / f"subj{i:02d}"
        folder.mkdir(parents=True)
        for contrast, image in head(i).items():
            write_nifti(folder / f"{contrast}.nii.gz", image, AFFINE)
        folders.append(folder)
    return folders
