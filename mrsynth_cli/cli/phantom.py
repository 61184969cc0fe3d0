"""``mrsynth phantom``: simulate multi-contrast brain MRI subjects with known ground truth."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["phantom"]


class LesionKind(str, Enum):
    tumour = "tumour"
    ms = "ms"
    none = "none"


class FieldStrength(str, Enum):
    t15 = "1.5"
    t3 = "3"


def phantom(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the BIDS dataset (created; must be empty or new).")],
    subjects: Annotated[int, typer.Option("--subjects", "-n", help="Number of subjects.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same files.")] = 0,
    resolution: Annotated[float, typer.Option("--resolution", help="Isotropic voxel size in mm (0.5-4).")] = 1.0,
    lesions: Annotated[LesionKind, typer.Option("--lesions", help="Pathology to simulate.")] = LesionKind.tumour,
    field: Annotated[FieldStrength, typer.Option("--field", help="Field strength in tesla.")] = FieldStrength.t3,
    skull: Annotated[bool, typer.Option("--skull/--no-skull", help="Simulate scalp and skull around the brain.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder, replacing files.")] = False,
) -> None:
    """Simulate SUBJECTS phantom subjects (T1w, T1ce, T2w, PDw, FLAIR, TOF-MRA) in BIDS layout.

    Anatomy comes from the MNI ICBM152 2009 tissue maps with per-subject deformation; signals from
    spin-echo, inversion-recovery and inflow equations with literature T1/T2/PD values; Rician noise,
    bias field and partial volume are added. Ground-truth labels and T1/T2/PD maps are written under
    derivatives/phantom. A simulator for tests, demos and pre-training - not clinical truth.
    """
    from mrsynth_cli.phantom import simulate_dataset

    folders = simulate_dataset(
        out_dir,
        n_subjects=subjects,
        seed=seed,
        resolution_mm=resolution,
        lesions=lesions.value,
        field_strength=float(field.value),
        skull=skull,
        force=force,
    )
    typer.echo(f"wrote {len(folders)} phantom subject(s) to {out_dir}")
