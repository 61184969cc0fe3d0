"""Atomic file writing: a temporary file in the destination folder, then ``os.replace``.

A reader (or a killed job) therefore sees either no file or the whole file, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError, OutputExistsError

__all__ = ["check_writable", "atomic_path", "write_json_atomic", "write_bytes_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: Path, *, force: bool = False) -> None:
    """Refuse to overwrite ``path`` unless ``force``; refuse a missing or read-only parent folder."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} already exists", "choose another path or pass --force to overwrite it")
    if path.is_dir():
        raise InputError(f"output {path} is a folder", "give a file path ending in .nii.gz")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:  # the folder that would hold the new ones
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"output folder {parent} cannot be created: {existing} is a file", "choose another folder")
    if not os.access(existing, os.W_OK):
        raise InputError(f"output folder {existing} is not writable", "choose a folder you can write to")


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: final destination.
        suffix: suffix for the temporary file (e.g. ``.nii.gz`` so that writers pick the format).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions a plain open() would
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, obj: Any, default: Callable[[Any], Any] | None = str) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=default) + "\n").encode())
