"""``mrsynth inspect``: show what mrsynth reads from input files or subject folders, and refuse bad ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["inspect_inputs"]


def inspect_inputs(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="NIfTI files (contrast=path, or a path whose name says the contrast) or subject folders.",
            show_default=False,
        ),
    ],
) -> None:
    """Validate inputs as synthesize would and print contrast, grid, orientation and TR/TE/TI.

    Folders are searched for subjects (BIDS sub-*/[ses-*/]anat, BraTS case folders, or plain
    per-subject folders), in sorted order.
    """
    from mrsynth_cli.io.contrasts import parse_input_spec
    from mrsynth_cli.io.subjects import discover_subjects, read_sidecar
    from mrsynth_cli.io.volume import grid_summary, load_volume

    def show(contrast, path: Path, indent: str = "") -> None:
        volume = load_volume(path, contrast)
        acq = read_sidecar(path)
        times = ", ".join(f"{k}={v:g}s" for k, v in acq.to_dict().items() if v is not None and k != "MagneticFieldStrength")
        typer.echo(f"{indent}{str(contrast):6s} {grid_summary(volume)}" + (f" [{times}]" if times else ""))

    for spec in inputs:
        if Path(spec).is_dir():
            for subject in discover_subjects(spec):
                typer.echo(f"{subject.subject_id}: {', '.join(map(str, subject.contrasts))}")
                for contrast in subject.contrasts:
                    show(contrast, subject.files[contrast], indent="  ")
        else:
            contrast, path = parse_input_spec(spec)
            show(contrast, path)
