#!/usr/bin/env python
"""Simulate one phantom subject (seed 0, 1 mm, tumour, 3 T) and write a QC montage PNG.

Rows: T1w, T1ce, T2w, PDw, FLAIR, TOF (+ its thick-slab MIPs) and the tissue labels, cut through
the tumour centre. Output: ``benchmarks/results/phantom_montage.png``.

Usage::

    .venv/bin/python benchmarks/phantom_montage.py [--resolution 1] [--seed 0] [--lesions tumour] [--out PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.phantom import simulate_subject, subject_rng
from mrsynth_cli.qc import write_montage

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--lesions", default="tumour", choices=["tumour", "ms", "none"])
    parser.add_argument("--field", type=float, default=3.0)
    parser.add_argument("--no-skull", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "phantom_montage.png")
    args = parser.parse_args()
    start = time.perf_counter()
    subject = simulate_subject(subject_rng(args.seed, 0), args.resolution, args.lesions, args.field, not args.no_skull)
    elapsed = time.perf_counter() - start
    names = {
        Contrast.T1: "T1w",
        Contrast.T1CE: "T1ce",
        Contrast.T2: "T2w",
        Contrast.PD: "PDw",
        Contrast.FLAIR: "FLAIR",
        Contrast.TOF: "TOF",
    }
    rows = {name: subject.images[contrast] for contrast, name in names.items()}
    rows["labels"] = subject.labels
    lesions = subject.info.get("lesion_list") or []
    point = lesions[0]["centre_mm"] if lesions else None
    path = write_montage(rows, args.out, affine=subject.affine, point_mm=point)
    print(f"simulated in {elapsed:.1f} s; montage: {path}")


if __name__ == "__main__":
    main()
