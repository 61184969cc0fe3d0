"""``mrsynth weights list|verify|fetch|import``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.boundary import boundary
from mrsynth_cli.cli.options import ForceOpt, WeightsDirOpt

app = typer.Typer(
    help="List, verify, download and import trained model weights.", no_args_is_help=True, rich_markup_mode="markdown"
)


def _weights_dir(override: Path | None) -> Path:
    from mrsynth_cli.paths import weights_dir

    return weights_dir(override)


@app.command("list")
@boundary
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, weights_dir: WeightsDirOpt = None
) -> None:
    """List installed and downloadable models: inputs, outputs, geometry, source, and whether present."""
    from mrsynth_cli.weights.manifest import all_entries
    from mrsynth_cli.weights.store import file_location

    root = _weights_dir(weights_dir)
    rows = []
    for entry in all_entries(root):
        present = all(file_location(entry, f, root).exists() for f in entry.files)
        rows.append({
            "name": entry.name, "family": entry.family, "version": entry.version,
            "inputs": [str(c) for c in entry.inputs], "outputs": [str(c) for c in entry.outputs],
            "geometry": entry.geometry, "source": entry.source, "present": present, "automatic": entry.automatic,
            "licence": entry.licence, "training_data": entry.training_data, "metrics": entry.metrics,
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no models installed")
    for row in rows:
        state = "present" if row["present"] else "not downloaded"
        only_named = "" if row["automatic"] else ", --model only"
        typer.echo(f"{row['name']:28s} {row['family']:10s} {'/'.join(row['inputs'])} -> {'/'.join(row['outputs'])} "
                   f"[{row['geometry'].get('dims')}, {row['source']}, {state}{only_named}]")


@app.command("verify")
@boundary
def verify(
    name: Annotated[str | None, typer.Argument(help="Model to verify (default: all present).")] = None,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Check sizes and sha256 of weight files against the manifest (exit 2 on any mismatch)."""
    from mrsynth_cli.weights.manifest import all_entries
    from mrsynth_cli.weights.store import file_location, verify_file

    root = _weights_dir(weights_dir)
    entries = [e for e in all_entries(root) if name is None or e.name == name]
    if name is not None and not entries:
        from mrsynth_cli.errors import InputError

        raise InputError(f"unknown model '{name}'", "see: mrsynth weights list")
    for entry in entries:
        for wfile in entry.files:
            path = file_location(entry, wfile, root)
            if not path.exists() and name is None:
                typer.echo(f"{entry.name}: not downloaded")
                continue
            verify_file(entry, wfile, path)
            typer.echo(f"{entry.name}: ok ({path.name}, sha256 {wfile.sha256[:12]}…)")


@app.command("fetch")
@boundary
def fetch(
    name: Annotated[str, typer.Argument(help="Model to download.")],
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Download a model's files at their pinned revision and verify them (the only network use)."""
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.weights.manifest import all_entries
    from mrsynth_cli.weights.store import ensure_files

    root = _weights_dir(weights_dir)
    entries = {e.name: e for e in all_entries(root)}
    if name not in entries:
        raise InputError(f"unknown model '{name}'", f"installed: {', '.join(entries) or 'none'}")
    for path in ensure_files(entries[name], root, allow_download=True):
        typer.echo(f"{name}: {path} verified")


@app.command("import")
@boundary
def import_(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder written by mrsynth train (OUT/checkpoint).")],
    name: Annotated[str, typer.Option("--name", help="Name for the model in the manifest.")],
    description: Annotated[str, typer.Option("--description", help="One line about the model.")] = "",
    training_data: Annotated[str, typer.Option("--training-data", help="What data trained it.")] = "",
    licence: Annotated[str, typer.Option("--licence", help="Licence of the weights.")] = "user-trained",
    force: ForceOpt = False,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Register a checkpoint you trained: its safetensors weights are copied and listed with a sha256."""
    from mrsynth_cli.weights.importer import import_checkpoint

    entry = import_checkpoint(
        checkpoint, name, _weights_dir(weights_dir), licence=licence, training_data=training_data,
        description=description, force=force,
    )
    typer.echo(f"imported {name} ({entry['family']}: {'/'.join(entry['inputs'])} -> {'/'.join(entry['outputs'])}); "
               f"use it with: mrsynth synthesize --model {name} ...")
