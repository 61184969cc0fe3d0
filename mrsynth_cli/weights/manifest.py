"""The weights manifest: which trained models exist, what they do, and how to get and verify them.

The packaged manifest is ``weights_manifest.toml`` (top level of the repository, shipped inside the
package). Models a user trains and imports are listed in ``<weights dir>/manifest.local.toml``.
Keys are validated strictly: an unknown key is an error, so a typo cannot silently drop a check.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast, parse_contrast

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["WeightsFile", "ModelEntry", "load_manifest", "packaged_manifest_path", "local_manifest_path", "all_entries"]

SCHEMA_VERSION = 1
GEOMETRIES = ("2D", "2.5D", "3D")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_ENTRY_KEYS = {
    "name", "family", "version", "inputs", "outputs", "geometry", "config", "files", "licence",
    "training_data", "metrics", "description", "min_inputs", "source", "automatic",
}
_FILE_KEYS = {"path", "repo_id", "revision", "filename", "sha256", "size"}


@dataclass(frozen=True)
class WeightsFile:
    """One file of a model: packaged/local (``path``) or on the Hugging Face Hub (repo, revision, filename)."""

    sha256: str
    size: int
    path: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path or self.filename or "").name


@dataclass(frozen=True)
class ModelEntry:
    """A trained model as the manifest describes it."""

    name: str
    family: str
    version: str
    inputs: tuple[Contrast, ...]
    outputs: tuple[Contrast, ...]
    geometry: dict[str, Any]
    config: dict[str, Any]
    files: tuple[WeightsFile, ...]
    licence: str
    training_data: str
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    min_inputs: int = 1
    # False: used only when named with --model (e.g. shipped for study while it scores below the baseline).
    automatic: bool = True
    source: str = "packaged"  # "packaged" or "local" (imported); set by the loader, not the file
    manifest: Path | None = None

    def accepts(self, available: set[Contrast]) -> bool:
        """Whether the model can run on these contrasts (at least ``min_inputs`` of its inputs)."""
        return len(available & set(self.inputs)) >= self.min_inputs

    def summary(self) -> str:
        ins = "/".join(map(str, self.inputs))
        outs = "/".join(map(str, self.outputs))
        return f"{self.name} ({self.family} {self.geometry.get('dims', '?')}): {ins} -> {outs}"


def _fail(manifest: Path, where: str, problem: str) -> InputError:
    return InputError(f"weights manifest {manifest}: {where}: {problem}", "fix the manifest entry")


def _parse_file(manifest: Path, where: str, raw: dict[str, Any]) -> WeightsFile:
    unknown = set(raw) - _FILE_KEYS
    if unknown:
        raise _fail(manifest, where, f"unknown keys {sorted(unknown)}")
    sha = str(raw.get("sha256", ""))
    if not _SHA256.match(sha):
        raise _fail(manifest, where, "sha256 must be 64 lower-case hex digits")
    size = raw.get("size")
    if not isinstance(size, int) or size <= 0:
        raise _fail(manifest, where, "size must be a positive integer (bytes)")
    if "path" in raw:
        if any(k in raw for k in ("repo_id", "revision", "filename")):
            raise _fail(manifest, where, "give either path or repo_id/revision/filename, not both")
        return WeightsFile(sha, size, path=str(raw["path"]))
    if not all(k in raw for k in ("repo_id", "revision", "filename")):
        raise _fail(manifest, where, "a file needs path, or repo_id + revision + filename")
    if not _REVISION.match(str(raw["revision"])):
        raise _fail(manifest, where, "revision must be a 40-character commit hash (pinned, not a branch)")
    return WeightsFile(sha, size, repo_id=str(raw["repo_id"]), revision=str(raw["revision"]), filename=str(raw["filename"]))


def _parse_entry(manifest: Path, raw: dict[str, Any], source: str) -> ModelEntry:
    where = f"model '{raw.get('name', '?')}'"
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise _fail(manifest, where, f"unknown keys {sorted(unknown)}")
    missing = {"name", "family", "version", "inputs", "outputs", "geometry", "config", "files", "licence", "training_data"} - set(raw)
    if missing:
        raise _fail(manifest, where, f"missing keys {sorted(missing)}")
    geometry = dict(raw["geometry"])
    if geometry.get("dims") not in GEOMETRIES:
        raise _fail(manifest, where, f"geometry.dims must be one of {GEOMETRIES}")
    files = tuple(_parse_file(manifest, f"{where} file {i}", f) for i, f in enumerate(raw["files"]))
    if not files:
        raise _fail(manifest, where, "no files")
    return ModelEntry(
        name=str(raw["name"]),
        family=str(raw["family"]),
        version=str(raw["version"]),
        inputs=tuple(parse_contrast(c) for c in raw["inputs"]),
        outputs=tuple(parse_contrast(c) for c in raw["outputs"]),
        geometry=geometry,
        config=dict(raw["config"]),
        files=files,
        licence=str(raw["licence"]),
        training_data=str(raw["training_data"]),
        metrics=dict(raw.get("metrics", {})),
        description=str(raw.get("description", "")),
        min_inputs=int(raw.get("min_inputs", 1)),
        automatic=bool(raw.get("automatic", True)),
        source=source,
        manifest=manifest,
    )


def load_manifest(path: Path, source: str = "packaged") -> list[ModelEntry]:
    """Parse and validate one manifest file (a missing local manifest is empty)."""
    path = Path(path)
    if not path.exists():
        if source == "local":
            return []
        raise InputError(f"weights manifest {path} is missing", "reinstall mrsynth")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"weights manifest {path} is not valid TOML ({exc})", "fix or remove it") from exc
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"weights manifest {path} has schema_version {data.get('schema_version')}", f"expected {SCHEMA_VERSION}")
    entries = [_parse_entry(path, raw, source) for raw in data.get("model", [])]
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"weights manifest {path} lists {duplicates} twice", "give every model a unique name")
    return entries


def packaged_manifest_path() -> Path:
    return Path(__file__).resolve().parent / "weights_manifest.toml"


def packaged_files_dir() -> Path:
    return Path(__file__).resolve().parent / "files"


def local_manifest_path(weights_dir: Path) -> Path:
    return Path(weights_dir) / "manifest.local.toml"


def all_entries(weights_dir: Path) -> list[ModelEntry]:
    """Packaged entries, then the user's imported ones (which may not reuse a packaged name)."""
    packaged = load_manifest(packaged_manifest_path(), "packaged")
    local = load_manifest(local_manifest_path(weights_dir), "local")
    clash = {e.name for e in packaged} & {e.name for e in local}
    if clash:
        raise InputError(
            f"imported model name(s) {sorted(clash)} clash with packaged models",
            f"rename them in {local_manifest_path(weights_dir)}",
        )
    return packaged + local
