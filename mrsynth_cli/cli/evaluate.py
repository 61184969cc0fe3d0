"""``mrsynth evaluate``: score a (synthetic) volume against a reference on the same grid."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["evaluate", "format_csv", "format_text"]


def _finite_or_none(value: Any) -> Any:
    """Strict JSON has no Infinity: PSNR of identical volumes is reported as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def _flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    flat = dict(result["metrics"])
    for view, values in result.get("mip", {}).items():
        for name, value in values.items():
            flat[f"mip_{view}_{name}"] = value
    return flat


def format_csv(result: dict[str, Any]) -> str:
    """One header line and one row: pred, ref, then every metric."""
    flat = _flat_metrics(result)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["pred", "ref", *flat])
    writer.writerow([result["pred"], result["ref"], *("inf" if v is None else f"{v:.6f}" for v in flat.values())])
    return buffer.getvalue()


def format_text(result: dict[str, Any]) -> str:
    """Human-readable metrics, one per line."""
    lines = [f"pred: {result['pred']}", f"ref:  {result['ref']}", f"mask: {result['mask']} ({result['mask_voxels']} voxels)"]
    lines += [
        f"  {name:14s} {'inf' if value is None else f'{value:.4f}'}" for name, value in _flat_metrics(result).items()
    ]
    lines.append(f"normalisation: {result['normalisation']}")
    return "\n".join(lines)


def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Volume to score (e.g. a synthetic FLAIR).")],
    ref: Annotated[Path, typer.Option("--ref", help="Reference (acquired) volume on the same grid.")],
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Brain mask on the same grid (default: derived from --ref).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (header and one row).")] = False,
    tof: Annotated[
        bool | None,
        typer.Option("--tof/--no-tof", help="Also score maximum intensity projections (default: if --ref is TOF/angio)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result to this file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Score PRED against REF: PSNR, SSIM (3D and mean 2D axial), NMSE, MAE, FSIM and GMSD.

    Both volumes are scaled by their own 0.5/99.5 percentiles inside the brain mask to [0, 1] first,
    the same normalisation for every model. For TOF-MRA the axial, coronal and sagittal MIPs are
    scored too.
    """
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.io.atomic import check_writable, write_json_atomic
    from mrsynth_cli.metrics.evaluate import evaluate_files

    if as_json and as_csv:
        raise InputError("--json and --csv were both given", "choose one output format")
    if out is not None:
        check_writable(out, force=force)
    result = _finite_or_none(evaluate_files(pred, ref, mask, tof=tof))
    if out is not None:
        write_json_atomic(out, result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif as_csv:
        typer.echo(format_csv(result), nl=False)
    else:
        typer.echo(format_text(result))
