"""Shared option types for the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

InputsOpt = Annotated[
    list[str],
    typer.Option(
        "--in",
        help="Input volumes: contrast=path, or a path whose name says the contrast (T1.nii.gz, sub-01_FLAIR.nii.gz). "
        "Several may follow one --in.",
        show_default=False,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps. A missing requested device is an error.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in the sidecar).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
WeightsDirOpt = Annotated[
    Path | None, typer.Option("--weights-dir", help="Weights folder (default: $MRSYNTH_HOME/weights or the user cache).")
]
RegistrationOpt = Annotated[
    str, typer.Option("--registration", help="auto (FLIRT if FSL is found, else SimpleITK), fsl, sitk or none.")
]
SegmentationOpt = Annotated[str, typer.Option("--segmentation", help="Tissue masks: auto, fsl, embedded or none.")]
