"""Find, verify, download and import weight files.

* Every file's sha256 is checked before every load; a mismatch (tampered or truncated file) is an
  error and the file is never used.
* Downloads go through huggingface-hub at a pinned 40-character revision into a temporary file,
  are verified, then moved into place. ``--offline``/``MRSYNTH_OFFLINE=1`` sets ``HF_HUB_OFFLINE``
  before huggingface-hub is imported; a missing file then prints the command that would fetch it.
* A read-only weights folder works: nothing is written when the files are present and verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from mrsynth_cli.errors import InputError, MrsynthError, RuntimeFailure
from mrsynth_cli.weights.manifest import ModelEntry, WeightsFile, packaged_files_dir

__all__ = ["sha256_of", "file_location", "verify_file", "ensure_files", "is_offline", "WeightsError"]

_CHUNK = 1 << 20


class WeightsError(MrsynthError):
    """A weights file is missing, tampered with, or cannot be fetched."""


def is_offline() -> bool:
    return os.environ.get("MRSYNTH_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_location(entry: ModelEntry, wfile: WeightsFile, weights_dir: Path) -> Path:
    """Where a file of ``entry`` lives (or will live once fetched)."""
    if wfile.path is not None:
        base = packaged_files_dir() if entry.source == "packaged" else Path(weights_dir)
        return base / wfile.path
    return Path(weights_dir) / "hub" / str(wfile.repo_id).replace("/", "--") / str(wfile.revision) / str(wfile.filename)


def verify_file(entry: ModelEntry, wfile: WeightsFile, path: Path) -> None:
    """Check size and sha256; raise :class:`WeightsError` (exit code 2) on any mismatch."""
    if not path.exists():
        raise WeightsError(f"weights file {path} of model {entry.name} is missing", f"run: mrsynth weights fetch {entry.name}")
    size = path.stat().st_size
    if size != wfile.size or sha256_of(path) != wfile.sha256:
        raise WeightsError(
            f"weights file {path} of model {entry.name} does not match its manifest sha256 (tampered, truncated or replaced)",
            f"delete it and run: mrsynth weights fetch {entry.name}" if wfile.repo_id else "reinstall or re-import the model",
        )


def _download(entry: ModelEntry, wfile: WeightsFile, destination: Path) -> None:
    if is_offline():
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - dependency
        raise RuntimeFailure("huggingface-hub is not installed", "pip install huggingface-hub") from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as tmp:
        try:
            fetched = hf_hub_download(
                repo_id=str(wfile.repo_id), filename=str(wfile.filename), revision=wfile.revision, local_dir=tmp,
            )
        except LocalEntryNotFoundError as exc:
            raise WeightsError(
                f"weights of model {entry.name} are not in {destination.parent} and mrsynth is offline",
                f"on a machine with network run: mrsynth weights fetch {entry.name} (then copy {destination.parent})",
            ) from exc
        except Exception as exc:  # network, HTTP or hub errors: one line, no traceback
            raise WeightsError(
                f"could not download {wfile.filename} of model {entry.name} from {wfile.repo_id} ({type(exc).__name__})",
                f"check the network and retry: mrsynth weights fetch {entry.name}",
            ) from exc
        verify_file(entry, wfile, Path(fetched))
        os.replace(fetched, destination)


def ensure_files(entry: ModelEntry, weights_dir: Path, *, allow_download: bool = False) -> list[Path]:
    """Paths of every verified file of ``entry``; downloads missing Hub files only if allowed.

    Raises:
        WeightsError: a file is missing (with the fetch command) or fails verification.
    """
    paths = []
    for wfile in entry.files:
        path = file_location(entry, wfile, weights_dir)
        if not path.exists() and wfile.repo_id is not None:
            if not allow_download or is_offline():
                raise WeightsError(
                    f"weights of model {entry.name} are not downloaded yet ({path})",
                    f"run: mrsynth weights fetch {entry.name}",
                )
            _download(entry, wfile, path)
        verify_file(entry, wfile, path)
        paths.append(path)
    return paths


def copy_atomic(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` so that a reader never sees a partial file."""
    from mrsynth_cli.io.atomic import atomic_path

    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def check_weights_dir_writable(weights_dir: Path) -> None:
    """Create the weights folder if needed; refuse a read-only one (only import writes there)."""
    try:
        weights_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create weights folder {weights_dir}", "set MRSYNTH_HOME or --weights-dir") from exc
    if not os.access(weights_dir, os.W_OK):
        raise InputError(f"weights folder {weights_dir} is read-only", "set MRSYNTH_HOME or --weights-dir to a writable folder")
