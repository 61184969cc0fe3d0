"""Training data: subject folders run through preprocessing once, cached as model-space arrays.

The cache key covers the file paths, sizes, modification times and the preprocessing options, so a
changed file or option re-runs preprocessing. Cached arrays live in ``<cache>/preprocessed``.

Optionally (:class:`TissueRequest`) tissue maps for structural guidance are computed too, from
chosen contrasts only (never the target) and, if asked, from every subset of them (a model that
accepts any subset of inputs must see masks made from the inputs it is given). They are cached
separately in ``<cache>/tissues``, so the arrays cached without them stay valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.subjects import Subject, discover_subjects

__all__ = ["SubjectArrays", "TissueRequest", "load_training_subjects", "split_validation", "tissue_key"]

log = logging.getLogger(__name__)


@dataclass
class SubjectArrays:
    """One preprocessed subject in model space: scaled contrasts, the brain mask, optional tissue maps.

    ``tissues`` maps the contrasts a segmentation was made from (:func:`tissue_key`) to its model-space
    maps (:func:`~mrsynth_cli.preprocessing.tissue_maps.model_space_tissue_maps`); empty unless asked.
    """

    subject_id: str
    volumes: dict[Contrast, np.ndarray]
    brain_mask: np.ndarray
    tissues: dict[tuple[Contrast, ...], dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class TissueRequest:
    """Also segment tissues, from ``sources`` only, for structural guidance.

    Attributes:
        method: ``auto``, ``fsl`` or ``embedded`` (:func:`~mrsynth_cli.preprocessing.tissues.segment_tissues`).
        sources: contrasts the maps may be made from (leave the target out).
        subsets: one segmentation per non-empty subset of the subject's sources (else only all of them).
    """

    method: str = "auto"
    sources: tuple[Contrast, ...] = ()
    subsets: bool = False


def tissue_key(contrasts) -> tuple[Contrast, ...]:
    """The canonical key of a set of contrasts (in :class:`Contrast` order)."""
    chosen = set(contrasts)
    return tuple(c for c in Contrast if c in chosen)


def _tissue_sets(request: TissueRequest, present: list[Contrast]) -> list[tuple[Contrast, ...]]:
    sources = tissue_key(c for c in request.sources if c in present)
    if not sources:
        return []
    if not request.subsets:
        return [sources]
    return [tissue_key(s) for n in range(1, len(sources) + 1) for s in combinations(sources, n)]


def _load_tissues(
    subject: Subject, present: list[Contrast], options, request: TissueRequest, cache_dir: Path | None, result=None
) -> dict[tuple[Contrast, ...], dict[str, np.ndarray]]:
    """Tissue maps of every requested contrast set, from the cache or computed (preprocessing again if needed)."""
    from mrsynth_cli.preprocessing.tissue_maps import model_space_tissue_maps

    sets = _tissue_sets(request, present)
    if not sets:
        return {}
    spec = {"method": request.method, "sets": [[str(c) for c in s] for s in sets], "version": 1}
    key = _cache_key(subject, present, {**asdict(options), "tissues": spec})
    cached = cache_dir / "tissues" / f"{key}.npz" if cache_dir is not None else None
    if cached is not None and cached.exists():
        out: dict[tuple[Contrast, ...], dict[str, np.ndarray]] = {}
        with np.load(cached) as data:
            for name in data.files:
                group, _, map_name = name.partition("/")
                out.setdefault(tissue_key(Contrast(c) for c in group.split("+")), {})[map_name] = data[name]
        return out
    if result is None:
        from mrsynth_cli.preprocessing.run import preprocess

        result = preprocess({c: subject.files[c] for c in present}, options)
    from mrsynth_cli.preprocessing.brain_mask import brain_mask
    from mrsynth_cli.preprocessing.tissues import segment_tissues

    out = {}
    for contrasts in sets:
        log.info("segmenting tissues of %s from %s", subject.subject_id, "+".join(map(str, contrasts)))
        volumes = [result.native[c] for c in contrasts]
        # As at inference, the brain mask too comes from these contrasts only.
        mask = brain_mask(volumes, method=options.brain_mask).mask
        tissues = segment_tissues(volumes, mask, method=request.method)
        out[contrasts] = model_space_tissue_maps(tissues, result.record, result.model_brain_mask)
    if cached is not None:
        from mrsynth_cli.io.atomic import atomic_path

        flat = {f"{'+'.join(map(str, k))}/{n}": v for k, maps in out.items() for n, v in maps.items()}
        with atomic_path(cached, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **flat)
    return out


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
    tissues: TissueRequest | None = None,
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
        tissues: also compute (and cache) tissue maps, see :class:`TissueRequest`.

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
                arrays = SubjectArrays(subject.subject_id, volumes, data["brain_mask"])
            if tissues is not None:
                arrays.tissues = _load_tissues(subject, present, options, tissues, cache_dir)
            out.append(arrays)
            continue
        log.info("preprocessing %s", subject.subject_id)
        result = preprocess({c: subject.files[c] for c in present}, options)
        arrays = SubjectArrays(subject.subject_id, result.model_inputs, result.model_brain_mask)
        if cached is not None:
            from mrsynth_cli.io.atomic import atomic_path

            with atomic_path(cached, suffix=".npz") as tmp:
                np.savez_compressed(tmp, brain_mask=arrays.brain_mask, **{str(c): v for c, v in arrays.volumes.items()})
        if tissues is not None:
            arrays.tissues = _load_tissues(subject, present, options, tissues, cache_dir, result)
        out.append(arrays)
    return out


def split_validation(
    subjects: list[SubjectArrays], validation_subjects: list[str] | None
) -> tuple[list[SubjectArrays], list[SubjectArrays]]:
    """(training, validation) subjects for ``--validation-subject``; every family splits the same way.

    Raises:
        InputError: an unknown subject ID, or nothing left to train on.
    """
    held_out = set(validation_subjects or [])
    unknown = held_out - {s.subject_id for s in subjects}
    if unknown:
        raise InputError(
            f"validation subject(s) {sorted(unknown)} not found", f"choose among {[s.subject_id for s in subjects]}"
        )
    train = [s for s in subjects if s.subject_id not in held_out]
    if not train:
        raise InputError("every subject is held out for validation", "hold out fewer subjects")
    return train, [s for s in subjects if s.subject_id in held_out]
