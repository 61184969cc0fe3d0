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
TransformOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--transform",
        help="CONTRAST=FILE: use this existing transform (ITK .tfm/.txt/.h5 mapping reference to input, "
        "or an FSL .mat from flirt -in INPUT -ref REFERENCE) instead of registering that input.",
        show_default=False,
    ),
]


def parse_transform_specs(specs: list[str] | None):
    """``--transform`` values as ``((contrast, path), ...)`` for :class:`PreprocessOptions`."""
    from pathlib import Path

    from mrsynth_cli.errors import InputError
    from mrsynth_cli.io.contrasts import parse_contrast

    pairs = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise InputError(f"--transform '{spec}' is not CONTRAST=FILE", "e.g. --transform t2=t2_to_t1.tfm")
        contrast = parse_contrast(key)
        if contrast in pairs:
            raise InputError(f"two --transform values for {contrast}", "give one transform per input")
        pairs[contrast] = Path(value)
    return tuple(pairs.items())


SegmentationOpt = Annotated[
    str,
    typer.Option(
        "--segmentation",
        help="Tissue masks (CSF/GM/WM, abnormal): auto (FSL FAST if found, else the embedded HMRF-EM), fsl, "
        "embedded or none. synthesize makes them only for models that use them.",
    ),
]
