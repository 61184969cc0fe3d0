"""Where mrsynth keeps weights and caches, and how the user moves them.

``MRSYNTH_HOME`` (or ``--weights-dir`` where a command has it) overrides the platform's user
cache folder (from platformdirs), like ``TORCH_HOME`` or ``nnUNet_results``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home_dir", "weights_dir", "cache_dir"]


def home_dir() -> Path:
    """mrsynth's data folder: ``$MRSYNTH_HOME`` or the platform user cache folder."""
    env = os.environ.get("MRSYNTH_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mrsynth", appauthor=False))


def weights_dir(override: str | Path | None = None) -> Path:
    """Folder of downloaded or imported weights."""
    return Path(override).expanduser() if override else home_dir() / "weights"


def cache_dir() -> Path:
    """Folder of reusable intermediate results (e.g. preprocessed training data)."""
    return home_dir() / "cache"
