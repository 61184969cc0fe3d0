"""``mrsynth report``: a QC montage and a self-contained HTML page for a synthetic volume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.options import ForceOpt

__all__ = ["report"]


def report(
    synthetic: Annotated[
        Path, typer.Argument(help="Synthetic .nii.gz written by mrsynth synthesize (its JSON sidecar is read).",
                             show_default=False)
    ],
    ref: Annotated[
        Path | None,
        typer.Option("--ref", help="Acquired volume of the target contrast on the same grid: adds an error map "
                     "and metrics."),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--in", help="Input volumes to show (contrast=path, several may follow one --in), instead of "
                     "the sidecar's Sources. Needed when there is no sidecar.", show_default=False),
    ] = None,
    uncertainty: Annotated[
        Path | None,
        typer.Option("--uncertainty", help="Uncertainty (std) map to show (default: the one the sidecar records)."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", help="Folder for NAME_qc.png and NAME_qc.html (default: beside SYNTHETIC)."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Write SYNTHETIC's QC report: NAME_qc.png (montage) and NAME_qc.html (self-contained page).

    Example: mrsynth report FLAIR_synth.nii.gz --ref FLAIR.nii.gz

    The montage shows the inputs, the synthetic output, the uncertainty map if one was written and,
    with --ref, the reference, the absolute error (after the scoring normalisation) and the metrics
    of mrsynth evaluate; TOF-MRA rows get maximum-intensity projections. The page embeds the montage,
    labels the image SYNTHETIC, lists model, sampler, seed, device, backends and timings from the
    sidecar, shows file names only (no folders), and loads nothing from anywhere.
    """
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.io.contrasts import parse_input_spec
    from mrsynth_cli.qc.report import read_sidecar, sidecar_inputs, sidecar_uncertainty, subject_report

    if not synthetic.is_file():
        raise InputError(f"synthetic volume {synthetic} does not exist", "give the .nii.gz that synthesize wrote")
    for what, path in (("--ref", ref), ("--uncertainty", uncertainty)):
        if path is not None and not path.is_file():
            raise InputError(f"{what} {path} does not exist", "check the path (and the working folder)")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} is a file", "give a folder")
    sidecar = read_sidecar(synthetic)
    if inputs:
        given: dict[str, Path] = {}
        for spec in inputs:
            contrast, path = parse_input_spec(spec)
            if str(contrast) in given:
                raise InputError(f"two inputs are {contrast}", "give one file per contrast")
            if not path.is_file():
                raise InputError(f"input {path} does not exist", "check the path (and the working folder)")
            given[str(contrast)] = path
    elif sidecar is None:
        raise InputError(
            f"no sidecar (.json) beside {synthetic}, so the inputs cannot be shown without --in",
            "pass --in t1=T1.nii.gz t2=T2.nii.gz ... (or report a file written by mrsynth synthesize)",
        )
    else:
        given = sidecar_inputs(sidecar, synthetic)
    if uncertainty is None and sidecar is not None:
        uncertainty = sidecar_uncertainty(sidecar, synthetic)
    page = subject_report(
        synthetic, inputs=given, uncertainty=uncertainty, reference=ref, out_dir=out_dir, sidecar=sidecar or {},
        force=force,
    )
    typer.echo(f"wrote QC report: {page} (montage {page.with_suffix('.png').name})")
