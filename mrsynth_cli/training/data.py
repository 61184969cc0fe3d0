"""Training data: subject folders run through preprocessing once, cached as model-space arrays.

The cache key covers the file paths, sizes, modification times and the preprocessing options, so a
changed file or option re-runs preprocessing. Cached arrays live in ``<cache>/preprocessed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.subjects import Subject, discover_subjects

__all__ = ["SubjectArrays", "load_training_subjects"]

log = logging.getLogger(__name__)


@dataclass
class SubjectArrays:
    """One preprocessed subject in model space: scaled contrasts and the brain mask."""

    subject_id: str
    volumes: dict[Contrast, np.ndarray]
    brain_mask: np.ndarray


def _same_grid(paths: list[Path]) -> bool:
    """Whether files share one grid, from their headers alone (cheap: no voxel data is read)."""
    import nibabel as nib

    headers = [nib.load(str(p)) for p in paths]
    first = headers[0]
    return all(
        h.shape[:3] == first.shape[:3] and np.allclose(h.affine, first.affine, atol=1e-3) for h in headers[1:]
    )


def _cache_key(subject: Subject, contrasts: list[Contrast], options_dict: dict) -> str:
    parts = []
    for contrast in contrasts:
        path = subject.files[contrast].resolve()
        stat = path.stat()
        parts.append([str(contrast), str(path), stat.st_size, int(stat.st_mtime)])
    blob = json.dumps({"files": parts, "options": options_dict, "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_training_subjects(
    roots: list[Path],
    contrasts: list[Contrast],
    *,
    required: list[Contrast],
    spacing_mm: float,
    model_shape: tuple[int, int, int],
    registration: str = "auto",
    cache_dir: Path | None = None,
) -> list[SubjectArrays]:
    """Discover subjects under ``roots``, keep those with every ``required`` contrast, preprocess them.

    Args:
        roots: folders searched with :func:`discover_subjects` (BIDS, BraTS, plain folders).
        contrasts: contrasts to load when present.
        required: contrasts a subject must have (e.g. the target).
        spacing_mm, model_shape: the model grid.
        registration: how inputs of one subject are aligned; subjects whose files already share one
            grid (co-registered datasets such as BraTS) are not registered again.
        cache_dir: where preprocessed arrays are cached (``None``: no cache).

    Raises:
        InputError: no usable subject was found.
    """
    from mrsynth_cli.preprocessing.run import PreprocessOptions, preprocess

    subjects: list[Subject] = []
    for root in roots:
        subjects.extend(discover_subjects(root))
    usable = [s for s in subjects if all(c in s.files for c in required) and len(set(s.files) & set(contrasts)) > 1]
    if not usable:
        raise InputError(
            f"no subject under {', '.join(map(str, roots))} has {', '.join(map(str, required))} and an input",
            "check the folders and the --target",
        )
    out: list[SubjectArrays] = []
    for subject in usable:
        present = [c for c in contrasts if c in subject.files]
        aligned = _same_grid([subject.files[c] for c in present])
        options = PreprocessOptions(
            reference=present[0], registration="none" if aligned else registration, spacing_mm=spacing_mm,
            model_shape=model_shape,
        )
        key = _cache_key(subject, present, asdict(options))
        cached = cache_dir / "preprocessed" / f"{key}.npz" if cache_dir is not None else None
        if cached is not None and cached.exists():
            with np.load(cached) as data:
                volumes = {Contrast(c): data[c] for c in data.files if c != "brain_mask"}
                out.append(SubjectArrays(subject.subject_id, volumes, data["brain_mask"]))
            continue
        log.info("preprocessing %s", subject.subject_id)
        result = preprocess({c: subject.files[c] for c in present}, options)
        arrays = SubjectArrays(subject.subject_id, result.model_inputs, result.model_brain_mask)
        if cached is not None:
            from mrsynth_cli.io.atomic import atomic_path

            with atomic_path(cached, suffix=".npz") as tmp:
                np.savez_compressed(tmp, brain_mask=arrays.brain_mask, **{str(c): v for c, v in arrays.volumes.items()})
        out.append(arrays)
    return out
