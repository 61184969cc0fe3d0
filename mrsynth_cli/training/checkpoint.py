"""Checkpoints: weights + resolved config + optimizer + step + RNG state, written atomically.

Layout of a checkpoint folder::

    model.safetensors   EMA weights for inference (safetensors: never unpickled), config in its metadata
    config.json         {"family", "config", "step", "mrsynth_version", "training"}
    train_state.pt      raw weights, EMA, optimizer, step and RNG states for --resume
                        (loaded with torch.load(weights_only=True), so it cannot run code)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mrsynth_cli import __version__
from mrsynth_cli.errors import InputError

__all__ = ["CheckpointInfo", "save_checkpoint", "read_checkpoint_config", "load_weights", "load_train_state"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class CheckpointInfo:
    family: str
    config: dict[str, Any]
    step: int
    path: Path


def save_checkpoint(
    folder: Path,
    *,
    family: str,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    train_state: dict[str, Any] | None,
    step: int,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically: a temporary sibling folder, then renames."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"family": family, "config": json.dumps(config)})
        meta = {"family": family, "config": config, "step": step, "mrsynth_version": __version__, "training": training or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if train_state is not None:
            torch.save(train_state, tmp / STATE_FILE)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_checkpoint_config(folder: Path) -> CheckpointInfo:
    """Read ``config.json`` of a checkpoint folder (or of the folder holding a ``model.safetensors``)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    path = folder / CONFIG_FILE
    if not path.exists():
        raise InputError(f"{folder} is not an mrsynth checkpoint (no {CONFIG_FILE})", "give the checkpoint folder train wrote")
    try:
        meta = json.loads(path.read_text())
        return CheckpointInfo(meta["family"], meta["config"], int(meta.get("step", 0)), folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a valid checkpoint config ({type(exc).__name__})", "re-create the checkpoint") from exc


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load safetensors weights (never unpickled); a corrupt file is a one-line error."""
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"weights file {path} is corrupt or not safetensors ({type(exc).__name__})",
            "re-download it (mrsynth weights fetch) or re-import the checkpoint",
        ) from exc


def load_train_state(folder: Path) -> dict[str, Any]:
    """Load the resumable state with ``weights_only=True``: a crafted pickle cannot run code."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise InputError(f"cannot resume: {path} does not exist", "start without --resume, or point --out at the run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/EOFError for corrupt or hostile files
        raise InputError(
            f"cannot resume: {path} is corrupt or not a plain checkpoint ({type(exc).__name__})",
            "delete it and start again without --resume",
        ) from exc
