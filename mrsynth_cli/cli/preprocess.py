"""``mrsynth preprocess``: register inputs, make brain and tissue masks, and keep the record that undoes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.options import (
    ForceOpt,
    InputsOpt,
    RegistrationOpt,
    SegmentationOpt,
    TransformOpt,
    parse_transform_specs,
)

__all__ = ["preprocess_cmd"]


def preprocess_cmd(
    inputs: InputsOpt,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the outputs (created).")],
    ref: Annotated[str | None, typer.Option("--ref", help="Reference contrast (default: the first input).")] = None,
    registration: RegistrationOpt = "auto",
    transform: TransformOpt = None,
    dof: Annotated[int, typer.Option("--dof", help="6 (rigid) or 12 (affine).")] = 6,
    brain_mask: Annotated[str, typer.Option("--brain-mask", help="auto, fsl or embedded.")] = "auto",
    segmentation: SegmentationOpt = "auto",
    spacing: Annotated[float | None, typer.Option("--spacing", help="Also resample the model grid to this mm.")] = None,
    force: ForceOpt = False,
) -> None:
    """Write the inputs registered onto the reference grid, the brain mask, tissue maps, transforms and record.

    Outputs in OUT_DIR: <contrast>_space-ref.nii.gz, brain_mask.nii.gz, tissue_{CSF,GM,WM}_pve.nii.gz,
    tissue_labels.nii.gz (1 CSF, 2 GM, 3 WM, 4 abnormal), tissue_abnormal.nii.gz (with two or more
    inputs, or FLAIR), tissues.json, <contrast>_to_ref.tfm/.mat and preprocess_record.json. The
    backend that ran for each step is printed.
    """
    from mrsynth_cli.errors import InputError, OutputExistsError
    from mrsynth_cli.io.atomic import write_json_atomic
    from mrsynth_cli.io.contrasts import parse_contrast, parse_input_spec
    from mrsynth_cli.io.volume import save_volume
    from mrsynth_cli.preprocessing.run import PreprocessOptions, preprocess

    parsed: dict = {}
    for spec in inputs:
        contrast, path = parse_input_spec(spec)
        if contrast in parsed:
            raise InputError(f"two inputs are {contrast}: {parsed[contrast]} and {path}", "give one file per contrast")
        parsed[contrast] = path
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"output folder {out_dir} is not empty", "choose a new --out-dir or pass --force")
    options = PreprocessOptions(
        reference=parse_contrast(ref) if ref else None, registration=registration, dof=dof, brain_mask=brain_mask,
        segmentation=segmentation, spacing_mm=spacing,
        transforms=parse_transform_specs(transform),
    )
    result = preprocess(parsed, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = result.reference
    for contrast, volume in result.native.items():
        save_volume(volume.data, reference, out_dir / f"{contrast.value}_space-ref.nii.gz", force=True)
    save_volume(result.brain_mask.data, reference, out_dir / "brain_mask.nii.gz", dtype="uint8", force=True)
    if result.tissues is not None:
        for name, pve in result.tissues.pve.items():
            save_volume(pve.data, reference, out_dir / f"tissue_{name}_pve.nii.gz", force=True)
        save_volume(result.tissues.labels.data, reference, out_dir / "tissue_labels.nii.gz", dtype="uint8", force=True)
        if result.tissues.abnormal is not None:
            save_volume(
                result.tissues.abnormal.data, reference, out_dir / "tissue_abnormal.nii.gz", dtype="uint8", force=True
            )
        write_json_atomic(out_dir / "tissues.json", result.tissues.to_dict())
    for contrast, registration_result in result.registrations.items():
        registration_result.save(out_dir / f"{contrast.value}_to_ref")
    result.record.save(out_dir / "preprocess_record.json")
    for step, backend in result.record.backends.items():
        typer.echo(f"{step}: {backend}")
    typer.echo(f"wrote {out_dir} (reference grid: {reference.path})")
