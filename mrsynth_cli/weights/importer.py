"""``mrsynth weights import``: register a checkpoint you trained as a local manifest model."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError
from mrsynth_cli.weights.manifest import SCHEMA_VERSION, all_entries, local_manifest_path
from mrsynth_cli.weights.store import check_weights_dir_writable, copy_atomic, sha256_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["import_checkpoint", "manifest_entry_for"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def manifest_entry_for(
    *, name: str, family: str, config: dict[str, Any], weights_path: str, sha256: str, size: int,
    version: str, licence: str, training_data: str, metrics: dict[str, Any], description: str = "",
) -> dict[str, Any]:
    """A manifest ``[[model]]`` table for a checkpoint (inputs, outputs and geometry from its family)."""
    from mrsynth_cli.registry import load_adapter

    adapter = load_adapter(family)
    described = adapter.describe(adapter.config_from_dict(config))
    return {
        "name": name, "family": family, "version": version, "description": description,
        "inputs": described["inputs"], "outputs": described["outputs"], "min_inputs": described["min_inputs"],
        "geometry": described["geometry"], "config": config,
        "files": [{"path": weights_path, "sha256": sha256, "size": size}],
        "licence": licence, "training_data": training_data, "metrics": metrics,
    }


def _last_validation(run_dir: Path) -> dict[str, Any]:
    import json

    log = run_dir / "train_log.jsonl"
    last: dict[str, Any] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "validation" in record:
                last = {"step": record["step"], **record["validation"]}
    return last


def import_checkpoint(
    checkpoint: Path, name: str, weights_dir: Path, *, version: str = "0.0.0", licence: str = "user-trained",
    training_data: str = "", description: str = "", force: bool = False,
) -> dict[str, Any]:
    """Copy a checkpoint's safetensors weights into the weights folder and list it in the local manifest."""
    import tomli_w

    from mrsynth_cli.training.checkpoint import WEIGHTS_FILE, read_checkpoint_config

    if not _NAME.match(name):
        raise InputError(f"model name '{name}' is not allowed", "use letters, digits, '.', '_' or '-' (max 64)")
    info = read_checkpoint_config(checkpoint)
    if info.family == "cola-diff-autoencoder":
        raise InputError(
            f"{info.path} is a cola-diff autoencoder, not a synthesis model",
            "train a model on it (mrsynth train cola-diff --autoencoder ...) and import that: it embeds it",
        )
    if info.family in ("aldm-vqgan", "aldm-spade"):
        raise InputError(
            f"{info.path} is an {info.family} stage checkpoint, not a synthesis model",
            "train the next aldm stages (--stage spade, then --stage ldm) and import the ldm one: it embeds all parts",
        )
    source = info.path / WEIGHTS_FILE
    if not source.exists():
        raise InputError(f"{info.path} has no {WEIGHTS_FILE}", "give the checkpoint folder written by mrsynth train")
    check_weights_dir_writable(weights_dir)
    existing = [e for e in all_entries(weights_dir) if e.name == name]
    if existing and (existing[0].source == "packaged" or not force):
        raise InputError(f"a model named '{name}' already exists", "choose another --name (or --force to replace an imported one)")
    relative = f"{name}/{WEIGHTS_FILE}"
    destination = weights_dir / relative
    copy_atomic(source, destination)
    metrics = _last_validation(info.path.parent)
    entry = manifest_entry_for(
        name=name, family=info.family, config=info.config, weights_path=relative,
        sha256=sha256_of(destination), size=destination.stat().st_size, version=version, licence=licence,
        training_data=training_data or f"imported from {info.path} (step {info.step})",
        metrics=metrics, description=description,
    )
    manifest = local_manifest_path(weights_dir)
    data = tomllib.loads(manifest.read_text()) if manifest.exists() else {"schema_version": SCHEMA_VERSION, "model": []}
    data["model"] = [m for m in data.get("model", []) if m.get("name") != name] + [entry]
    from mrsynth_cli.io.atomic import write_bytes_atomic

    write_bytes_atomic(manifest, tomli_w.dumps(data).encode())
    return entry
