"""Config presets of the families: ``cpu``/``paper`` TOML files beside each family, or a user's TOML path.

One reader for every family, so that a preset is found, parsed and checked (unknown tables, unknown
training-loop keys) the same way and fails with the same one-line errors.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["preset_path", "read_preset"]


def preset_path(family: str, configs_dir: Path, name_or_path: str) -> Path:
    """A packaged preset by name (``cpu``, ``paper``) or a path to a TOML file of the same layout."""
    packaged = configs_dir / f"{name_or_path}.toml"
    if packaged.exists():
        return packaged
    path = Path(name_or_path)
    if path.is_file():
        return path
    choices = sorted(p.stem for p in configs_dir.glob("*.toml"))
    raise InputError(f"no {family} config '{name_or_path}'", f"use one of {', '.join(choices)} or a .toml path")


def read_preset(
    family: str, configs_dir: Path, name_or_path: str, tables: Iterable[str], training_tables: Iterable[str]
) -> tuple[Path, dict[str, Any]]:
    """The preset's path and tables; unknown tables, and unknown keys in the training-loop tables, are errors."""
    from mrsynth_cli.training.loop import TrainSettings

    path = preset_path(family, configs_dir, name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{family} config {path} is not valid TOML ({exc})", "fix the file") from exc
    allowed = set(tables)
    unknown = set(data) - allowed
    if unknown:
        raise InputError(
            f"{family} config {path} has unknown tables {sorted(unknown)}",
            f"use {', '.join(f'[{t}]' for t in sorted(allowed))}",
        )
    loop_keys = {f.name for f in fields(TrainSettings)}
    for table in training_tables:
        bad = set(data.get(table, {})) - loop_keys
        if bad:
            raise InputError(
                f"{family} config {path} [{table}] has unknown keys {sorted(bad)}", f"known: {sorted(loop_keys)}"
            )
    return path, data
