"""``mrsynth info``: versions, compute devices, FSL, and where weights and caches live."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import Annotated, Any

import typer

__all__ = ["info", "collect_info"]

_PACKAGES = ("torch", "monai", "nibabel", "SimpleITK", "fslpy", "typer", "huggingface-hub", "PyWavelets")


def _version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def collect_info() -> dict[str, Any]:
    """Everything ``mrsynth info`` reports, as a JSON-ready dict."""
    import torch

    from mrsynth_cli import __version__
    from mrsynth_cli.fsl import find_fsl_tool, fsl_dir
    from mrsynth_cli.paths import cache_dir, weights_dir

    fsl_root = fsl_dir()
    return {
        "mrsynth": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version_of(name) for name in _PACKAGES},
        "devices": _devices(),
        "torch_threads": torch.get_num_threads(),
        "fsl": {
            "dir": str(fsl_root) if fsl_root else None,
            "tools": {t: str(p) if (p := find_fsl_tool(t)) else None for t in ("flirt", "fast", "bet")},
        },
        "weights_dir": str(weights_dir()),
        "cache_dir": str(cache_dir()),
        "telemetry": "none; network only for an explicit weights download",
    }


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show versions, compute devices, whether FSL was found, and the weights and cache folders."""
    data = collect_info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"mrsynth {data['mrsynth']} (Python {data['python']}, {data['platform']})")
    for name, version in data["packages"].items():
        typer.echo(f"  {name:16s} {version or 'not installed'}")
    typer.echo(f"devices: {', '.join(data['devices'])} (torch threads: {data['torch_threads']})")
    fsl = data["fsl"]
    if fsl["dir"]:
        found = ", ".join(f"{t}={'yes' if p else 'no'}" for t, p in fsl["tools"].items())
        typer.echo(f"FSL: {fsl['dir']} ({found})")
    else:
        typer.echo("FSL: not found (FSLDIR/FSLDEVDIR unset); the embedded SimpleITK/Python methods are used")
    typer.echo(f"weights: {data['weights_dir']}  (set MRSYNTH_HOME to move)")
    typer.echo(f"cache:   {data['cache_dir']}")
    typer.echo(f"telemetry: {data['telemetry']}")
