"""Subjects: which contrasts a folder holds, and the acquisition parameters in their sidecars.

Three layouts are recognised, always listed in sorted order so runs are reproducible:

* BIDS: ``sub-*/[ses-*/]anat/*.nii[.gz]`` (a subject per subject/session);
* BraTS case folders: ``<case>/<case>-t1n.nii.gz`` and friends;
* plain per-subject folders: ``<subject>/T1.nii.gz``, ``FLAIR.nii.gz``... (or the folder itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mrsynth_cli.errors import ContrastError, InputError
from mrsynth_cli.io.contrasts import Contrast, contrast_from_filename, nifti_stem

__all__ = ["Acquisition", "Subject", "read_sidecar", "subject_from_folder", "discover_subjects"]

#: Above these a value in a sidecar is surely milliseconds, not BIDS seconds.
_MAX_SECONDS = {"RepetitionTime": 30.0, "EchoTime": 1.0, "InversionTime": 10.0}


@dataclass(frozen=True)
class Acquisition:
    """Acquisition parameters in seconds (BIDS units) and tesla; ``None`` when unknown."""

    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    field_strength: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "RepetitionTime": self.repetition_time,
            "EchoTime": self.echo_time,
            "InversionTime": self.inversion_time,
            "MagneticFieldStrength": self.field_strength,
        }


def sidecar_path(nifti: Path) -> Path:
    """The BIDS JSON sidecar beside a NIfTI file (same stem, ``.json``)."""
    return nifti.with_name(nifti_stem(nifti) + ".json")


def read_sidecar(nifti: str | Path) -> Acquisition:
    """Read RepetitionTime, EchoTime, InversionTime (s) and MagneticFieldStrength (T) from a sidecar.

    A missing sidecar gives an empty :class:`Acquisition`.

    Raises:
        InputError: the sidecar is not valid JSON, or holds a value that is not a positive number
            or is clearly in milliseconds.
    """
    path = sidecar_path(Path(nifti))
    if not path.exists():
        return Acquisition()
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"sidecar {path} is not valid JSON ({exc.__class__.__name__})", "fix or remove it") from exc
    if not isinstance(meta, dict):
        raise InputError(f"sidecar {path} is not a JSON object", "fix or remove it")
    values: dict[str, float | None] = {}
    for key in ("RepetitionTime", "EchoTime", "InversionTime", "MagneticFieldStrength"):
        value = meta.get(key)
        if value is None:
            values[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(f"sidecar {path}: {key} is {value!r}, not a positive number", "fix the sidecar")
        if key in _MAX_SECONDS and value > _MAX_SECONDS[key]:
            raise InputError(
                f"sidecar {path}: {key} = {value} looks like milliseconds",
                f"BIDS sidecars use seconds: write {value / 1000:g}",
            )
        values[key] = float(value)
    return Acquisition(
        values["RepetitionTime"], values["EchoTime"], values["InversionTime"], values["MagneticFieldStrength"]
    )


@dataclass
class Subject:
    """One subject (or session): its contrasts and where each file lies."""

    subject_id: str
    files: dict[Contrast, Path] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def contrasts(self) -> list[Contrast]:
        return [c for c in Contrast if c in self.files]

    def acquisition(self, contrast: Contrast) -> Acquisition:
        return read_sidecar(self.files[contrast])


def _nifti_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))]
    return sorted(files)


def subject_from_folder(folder: Path, subject_id: str | None = None) -> Subject:
    """Collect the contrasts in one folder; files whose names say no contrast (masks...) are skipped.

    Raises:
        ContrastError: two files in the folder claim the same contrast.
    """
    subject = Subject(subject_id or folder.name, folder=folder)
    for path in _nifti_files(folder):
        contrast = contrast_from_filename(path)
        if contrast is None:
            continue
        if contrast in subject.files:
            raise ContrastError(
                f"{folder} holds two {contrast} files: {subject.files[contrast].name} and {path.name}",
                "keep one per contrast, or name the inputs explicitly with --in",
            )
        subject.files[contrast] = path
    return subject


def discover_subjects(root: str | Path) -> list[Subject]:
    """Find subjects under ``root`` (BIDS, BraTS case folders or plain per-subject folders), sorted.

    A folder that itself holds recognisable contrasts is one subject.

    Raises:
        InputError: ``root`` is missing, not a folder, or holds no recognisable subject.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder", "give the folder that holds the subjects")
    subjects: list[Subject] = []
    bids = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if bids:
        for sub in bids:
            sessions = sorted(p for p in sub.glob("ses-*") if p.is_dir())
            for folder, sid in [(s / "anat", f"{sub.name}_{s.name}") for s in sessions] or [(sub / "anat", sub.name)]:
                if folder.is_dir():
                    subject = subject_from_folder(folder, sid)
                    if subject.files:
                        subjects.append(subject)
    else:
        own = subject_from_folder(root)
        if own.files:
            subjects.append(own)
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if child.name == "derivatives":
                continue
            subject = subject_from_folder(child)
            if subject.files:
                subjects.append(subject)
    if not subjects:
        raise InputError(
            f"no subjects with recognisable contrasts found in {root}",
            "expected BIDS sub-*/anat/, BraTS case folders or per-subject folders with files like T1.nii.gz",
        )
    return subjects
