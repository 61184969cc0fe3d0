"""Finding FSL the way fslpy does: ``$FSLDEVDIR`` first, then ``$FSLDIR``; tools live in ``bin/``.

Only the lookup lives here (it must be cheap enough for ``mrsynth info``); the wrappers that run
FLIRT/FAST/BET go through fslpy in the preprocessing package.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["find_fsl_tool", "fsl_dir", "fsl_output_type"]


def fsl_dir() -> Path | None:
    """The FSL installation folder, or ``None`` when neither variable points at a folder."""
    for var in ("FSLDEVDIR", "FSLDIR"):
        value = os.environ.get(var)
        if value and Path(value).is_dir():
            return Path(value)
    return None


def find_fsl_tool(name: str) -> Path | None:
    """Path to an executable FSL tool (e.g. ``flirt``), or ``None`` if FSL does not provide it."""
    for var in ("FSLDEVDIR", "FSLDIR"):
        value = os.environ.get(var)
        if not value:
            continue
        candidate = Path(value) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def fsl_output_type(value: str) -> Iterator[None]:
    """Set ``FSLOUTPUTTYPE`` for child processes (fslpy's wrappers inherit ``os.environ``)."""
    old = os.environ.get("FSLOUTPUTTYPE")
    os.environ["FSLOUTPUTTYPE"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FSLOUTPUTTYPE", None)
        else:
            os.environ["FSLOUTPUTTYPE"] = old
