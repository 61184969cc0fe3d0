"""``mrsynth batch``: every subject of a dataset, in BIDS-App form, one failure never stopping the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.options import DeviceOpt, ForceOpt, RegistrationOpt, SeedOpt, SegmentationOpt, WeightsDirOpt

__all__ = ["batch"]


def batch(
    input_dir: Annotated[Path, typer.Argument(help="BIDS dataset, or a folder of subject folders.", show_default=False)],
    output_dir: Annotated[
        Path, typer.Argument(help="Where derivatives/mrsynth/ goes (or a .../derivatives/mrsynth folder).")
    ],
    analysis_level: Annotated[
        str, typer.Argument(help="BIDS-App analysis level; only 'participant' exists.")
    ] = "participant",
    target: Annotated[
        list[str], typer.Option("--target", help="Contrast(s) to synthesize, e.g. flair (several may follow).")
    ] = None,  # type: ignore[assignment]
    participant_label: Annotated[
        list[str] | None, typer.Option("--participant-label", help="Only these subjects (with or without 'sub-').")
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Leave subjects whose outputs exist alone (resume a run).")
    ] = False,
    force: ForceOpt = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed subject.")] = False,
    part: Annotated[
        str | None,
        typer.Option("--part", help="i/n: every n-th subject from the i-th (default: from SLURM_ARRAY_TASK_ID/COUNT)."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Use this manifest model for every subject.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="Sampler for diffusion models.")] = "auto",
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (diffusion models).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    registration: RegistrationOpt = "auto",
    segmentation: SegmentationOpt = "auto",
    weights_dir: WeightsDirOpt = None,
    qc: Annotated[
        bool, typer.Option("--qc", help="Write a QC page per subject and an index under derivatives/mrsynth/qc/.")
    ] = False,
) -> None:
    """Synthesize TARGET for every subject; outputs are BIDS derivatives with JSON sidecars.

    Example: mrsynth batch /data/bids /data/out participant --target flair --skip-existing

    Each subject uses all its other contrasts as inputs. The model is loaded once. A failing subject
    is recorded and the run goes on; the exit code is 1 when any subject failed. A run report and
    per-subject logs go to OUTPUT_DIR/derivatives/mrsynth/logs/. SLURM arrays: each task takes its
    own part of the subjects (--part or SLURM_ARRAY_TASK_ID/COUNT); claim files keep two runs off
    the same subject.
    """
    from mrsynth_cli.batch import BatchOptions, parse_part, run_batch
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.io.contrasts import parse_contrast

    if analysis_level != "participant":
        raise InputError(f"analysis level '{analysis_level}' is not supported", "use 'participant'")
    if not target:
        raise InputError("no --target given", "name the contrast to synthesize, e.g. --target flair")
    options = BatchOptions(
        input_dir=input_dir, output_dir=output_dir, targets=[parse_contrast(t) for t in target],
        participant_labels=list(participant_label or []), skip_existing=skip_existing, force=force,
        fail_fast=fail_fast, part=parse_part(part), model=model, sampler=sampler, steps=steps, seed=seed,
        device=device, registration=registration, segmentation=segmentation, weights_dir=weights_dir, qc=qc,
    )
    report = run_batch(options, echo=typer.echo)
    typer.echo(f"{report.summary()}; report: {report.report_path}")
    if report.failed:
        typer.echo(f"mrsynth: {len(report.failed)} subject(s) failed (see the report)", err=True)
        raise typer.Exit(1)
