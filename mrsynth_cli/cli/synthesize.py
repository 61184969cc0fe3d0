"""``mrsynth synthesize``: make a missing contrast from the ones a scan has."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.options import (
    DeviceOpt,
    ForceOpt,
    InputsOpt,
    RegistrationOpt,
    SeedOpt,
    SegmentationOpt,
    TransformOpt,
    parse_transform_specs,
    WeightsDirOpt,
)

__all__ = ["synthesize"]


def synthesize(
    inputs: InputsOpt,
    target: Annotated[list[str], typer.Option("--target", help="Contrast(s) to synthesize, e.g. flair (several may follow).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output .nii.gz (one target).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Output folder (one file per target).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Use this manifest model instead of the automatic choice.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="Sampler for diffusion models: auto (a distilled student on the CPU if one is installed, else the model's default), ddpm, ddim, fast, bridge, distilled.")] = "auto",
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (diffusion models).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Draws to average (diffusion models); see --uncertainty.")] = 1,
    uncertainty: Annotated[Path | None, typer.Option("--uncertainty", help="Write the voxel-wise std of the draws here.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    ref: Annotated[str | None, typer.Option("--ref", help="Contrast whose grid the output takes (default: the first input).")] = None,
    registration: RegistrationOpt = "auto",
    transform: TransformOpt = None,
    segmentation: SegmentationOpt = "auto",
    force: ForceOpt = False,
    weights_dir: WeightsDirOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network (also MRSYNTH_OFFLINE=1).")] = False,
    qc: Annotated[
        bool, typer.Option("--qc", help="Also write a QC report per output: NAME_qc.png (montage of inputs, output "
                           "and uncertainty) and NAME_qc.html (self-contained page).")
    ] = False,
    mip_dir: Annotated[
        Path | None,
        typer.Option("--mip-dir", help="Also write axial, coronal and sagittal maximum intensity projections of each "
                     "output here, as NIfTI and PNG (for TOF-MRA)."),
    ] = None,
    qc_dir: Annotated[
        Path | None,
        typer.Option("--qc-dir", help="Folder for the QC report (implies --qc; default: beside the output)."),
    ] = None,
    tr: Annotated[
        list[str] | None,
        typer.Option("--tr", help="Repetition time of an input in seconds, contrast=value (e.g. t1=0.45; several "
                     "may follow); overrides its JSON sidecar. Needed by physics-based models (mrdiff), ignored by "
                     "others."),
    ] = None,
    te: Annotated[
        list[str] | None,
        typer.Option("--te", help="Echo time of an input in seconds, contrast=value (e.g. t1=0.0098), as --tr."),
    ] = None,
    ti: Annotated[
        list[str] | None,
        typer.Option("--ti", help="Inversion time of an inversion-recovery input in seconds (e.g. flair=2.5), "
                     "as --tr."),
    ] = None,
) -> None:
    """Synthesize TARGET from the inputs; the output lies on the reference input's grid, labelled synthetic.

    Example: mrsynth synthesize --in t1=T1.nii.gz t2=T2.nii.gz --target flair --out FLAIR_synth.nii.gz

    A JSON sidecar beside the output records the sources, model (name, version, sha256), sampler,
    steps, seed, device and preprocessing backends. Nothing leaves this machine.

    With --qc a QC report (PNG montage and HTML page, see mrsynth report) is written after the output.
    """
    import os

    if offline:
        os.environ["MRSYNTH_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.io.contrasts import parse_contrast, parse_input_spec
    from mrsynth_cli.pipeline import SynthesisRequest
    from mrsynth_cli.pipeline import synthesize as run

    parsed: dict = {}
    for spec in inputs:
        contrast, path = parse_input_spec(spec)
        if contrast in parsed:
            raise InputError(f"two inputs are {contrast}: {parsed[contrast]} and {path}", "give one file per contrast")
        parsed[contrast] = path
    targets = [parse_contrast(t) for t in target]
    request = SynthesisRequest(
        inputs=parsed, targets=targets, out=out, out_dir=out_dir, model=model, sampler=sampler, steps=steps,
        samples=samples, uncertainty=uncertainty, seed=seed, device=device,
        reference=parse_contrast(ref) if ref else None, registration=registration, segmentation=segmentation,
        transforms=parse_transform_specs(transform),
        force=force, weights_dir=weights_dir, progress=sys.stderr.isatty(),
        acquisition=_acquisition_flags(tr, te, ti),
    )
    qc = qc or qc_dir is not None
    if qc:  # refuse existing report files before any work, like the outputs themselves
        from mrsynth_cli.io.atomic import check_writable
        from mrsynth_cli.pipeline import output_paths
        from mrsynth_cli.qc.report import qc_paths

        reference_contrast = request.reference or next(iter(request.inputs))
        if reference_contrast in request.inputs:
            for output in output_paths(request, request.inputs[reference_contrast]).values():
                for path in qc_paths(output, qc_dir):
                    check_writable(path, force=force)
    if mip_dir is not None:  # refuse existing MIP files before any work, like the outputs themselves
        from mrsynth_cli.io.atomic import check_writable
        from mrsynth_cli.io.mip_files import mip_paths
        from mrsynth_cli.pipeline import output_paths

        reference_contrast = request.reference or next(iter(request.inputs))
        if reference_contrast in request.inputs:
            for output in output_paths(request, request.inputs[reference_contrast]).values():
                for files in mip_paths(output, mip_dir).values():
                    for path in files:
                        check_writable(path, force=force)
    written = run(request)
    for contrast, path in written.items():
        typer.echo(f"wrote synthetic {contrast}: {path}")
    if qc:
        _write_qc(written, parsed, uncertainty, qc_dir, force)
    if mip_dir is not None:
        _write_mips(written, mip_dir, force)


def _write_mips(written: dict, mip_dir: Path, force: bool) -> None:
    """Three MIPs (NIfTI + PNG) per written output, from the file as written (its own grid)."""
    from mrsynth_cli.io.mip_files import write_mip_files
    from mrsynth_cli.io.volume import load_volume

    for contrast, path in written.items():
        volume = load_volume(path)
        files = write_mip_files(volume.data, volume.affine, path, mip_dir, force=force)
        typer.echo(f"wrote {contrast} MIPs: {', '.join(str(png) for _, png in files.values())}")


def _acquisition_flags(tr: list[str] | None, te: list[str] | None, ti: list[str] | None) -> dict:
    if not (tr or te or ti):
        return {}
    from mrsynth_cli.families.mrdiff.physics import parse_acquisition_flags

    return parse_acquisition_flags(tr, te, ti)


def _write_qc(written: dict, inputs: dict, uncertainty: Path | None, qc_dir: Path | None, force: bool) -> None:
    """A QC report per written output; a failure here says the outputs themselves were written."""
    from mrsynth_cli.errors import MrsynthError, RuntimeFailure
    from mrsynth_cli.qc.report import subject_report

    # One --uncertainty file holds one target's std map: show it only when there is one target.
    std = uncertainty if uncertainty is not None and uncertainty.is_file() and len(written) == 1 else None
    for contrast, path in written.items():
        try:
            page = subject_report(path, inputs={str(c): p for c, p in inputs.items()}, uncertainty=std,
                                  out_dir=qc_dir, force=force)
        except MrsynthError as exc:
            raise RuntimeFailure(
                f"synthetic {contrast} was written to {path} but its QC report failed: {exc.message}",
                exc.hint or "run mrsynth report on the output",
            ) from None
        typer.echo(f"wrote QC report: {page}")
