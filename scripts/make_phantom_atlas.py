#!/usr/bin/env python
"""Build the tissue maps packaged in ``mrsynth_cli/phantom/data/`` (run once; needs nilearn).

Source: the MNI ICBM152 2009a nonlinear symmetric template (Fonov et al. 2009, 2011; Collins et al.
1999) as shipped inside the nilearn wheel (``nilearn/datasets/data/
mni_icbm152_{gm,wm,t1}_tal_nlin_sym_09a_converted.nii.gz``, 1 mm, uint8 0-255). nilearn is used
only to locate these files; it is not a runtime dependency of mrsynth.

Steps:

1. GM and WM probabilities = the uint8 maps / 255.
2. Intracranial (brain) support = the voxels where the skull-stripped T1 template is non-zero,
   holes filled. The CSF probability map is not shipped in the wheel, so it is derived inside that
   support as ``CSF = clip(1 - GM - WM, 0, 1)`` (ventricles, cisterns and the thin layer of sulcal
   CSF the template keeps); outside the support CSF = 0. (On the T1 template these CSF voxels are
   the dark ones: median T1 intensity 0.30 where GM + WM < 0.2, against 0.65 in GM and 0.87 in WM.)
3. Down-sample 1 mm -> 1.5 mm: Gaussian pre-filter (sigma = half the new voxel size, 0.75 mm),
   then linear interpolation at the centres of the 1.5 mm grid, which keeps the template's world
   coordinates (RAS, MNI mm).
4. Quantise to uint8 so that GM + WM + CSF <= 255 in every voxel, and write three gzip'd NIfTI
   files (level 9) with a deterministic gzip header.

Usage::

    .venv/bin/python scripts/make_phantom_atlas.py [--resolution 1.5]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "mrsynth_cli" / "phantom" / "data"
NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise SystemExit("nilearn is needed to build the atlas: pip install nilearn")
    return Path(spec.origin).parent / "datasets" / "data"


def downsample(data: np.ndarray, affine: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Pre-filter and resample a 1 mm volume onto a ``step`` mm grid covering the same field of view."""
    smooth = ndimage.gaussian_filter(data, sigma=0.5 * step, mode="constant")
    shape = tuple(int(np.floor((n - 1) / step)) + 1 for n in data.shape)
    coords = np.meshgrid(*[np.arange(n, dtype=np.float64) * step for n in shape], indexing="ij")
    out = ndimage.map_coordinates(smooth, coords, order=1, mode="constant", cval=0.0)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * step
    return out.astype(np.float32), new_affine


def quantise(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    total = gm + wm + csf
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-6), 1.0)
    gm_q = np.rint(np.clip(gm * scale, 0, 1) * 255).astype(np.int32)
    wm_q = np.rint(np.clip(wm * scale, 0, 1) * 255).astype(np.int32)
    wm_q = np.minimum(wm_q, 255 - gm_q)
    csf_q = np.rint(np.clip(csf * scale, 0, 1) * 255).astype(np.int32)
    csf_q = np.minimum(csf_q, 255 - gm_q - wm_q)
    return gm_q.astype(np.uint8), wm_q.astype(np.uint8), csf_q.astype(np.uint8)


def save(data: np.ndarray, affine: np.ndarray, path: Path, descrip: str) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=4)  # MNI152 space
    image.set_sform(affine, code=4)
    image.header["descrip"] = descrip.encode()[:79]
    image.header.set_xyzt_units("mm")
    # nibabel's gzip writer sets mtime 0 and no file name (same bytes each run); level 9 for size.
    previous = nib.openers.Opener.default_compresslevel
    nib.openers.Opener.default_compresslevel = 9
    try:
        nib.save(image, str(path))
    finally:
        nib.openers.Opener.default_compresslevel = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.5, help="voxel size of the packaged maps (mm)")
    args = parser.parse_args()
    src = nilearn_data_dir()
    images = {key: nib.load(str(src / NAME.format(key))) for key in ("gm", "wm", "t1")}
    affine = images["gm"].affine
    for key, image in images.items():
        if not np.allclose(image.affine, affine):
            raise SystemExit(f"{key} is not on the GM grid")
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    support = ndimage.binary_fill_holes(t1 > 0)
    gm *= support
    wm *= support
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * support

    step = args.resolution
    maps = {}
    for key, data in (("gm", gm), ("wm", wm), ("csf", csf)):
        maps[key], new_affine = downsample(data, affine, step)
    gm_q, wm_q, csf_q = quantise(maps["gm"], maps["wm"], maps["csf"])
    tag = f"{step:g}".replace(".", "p") + "mm"
    OUT.mkdir(parents=True, exist_ok=True)
    for key, data in (("gm", gm_q), ("wm", wm_q), ("csf", csf_q)):
        path = OUT / f"icbm152_2009a_sym_{key}_{tag}.nii.gz"
        save(data, new_affine, path, f"ICBM152 2009a sym {key.upper()} probability x255, {step:g} mm")
        print(f"{path.relative_to(REPO)}: {data.shape}, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
