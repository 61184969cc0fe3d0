"""Write simulated subjects as a BIDS dataset with ground truth under ``derivatives/phantom``.

Layout (``XX`` = subject label)::

    OUT_DIR/dataset_description.json, README.md, participants.tsv
    OUT_DIR/sub-XX/anat/sub-XX_T1w.nii.gz (+ .json), sub-XX_ce-gadolinium_T1w, sub-XX_T2w,
        sub-XX_PDw, sub-XX_FLAIR, sub-XX_angio
    OUT_DIR/derivatives/phantom/dataset_description.json, dseg.tsv
    OUT_DIR/derivatives/phantom/sub-XX/anat/
        sub-XX_dseg.nii.gz (+ sub-XX_dseg.tsv), sub-XX_label-{GM,WM,CSF}_probseg.nii.gz,
        sub-XX_desc-{brain,lesion,vessels}_mask.nii.gz, sub-XX_{T1map,T2map,PDmap}.nii.gz (+ .json),
        sub-XX_desc-phantom_parameters.json

Every file is written atomically, and the same arguments give byte-identical files (nibabel's
gzip writer stores no file name and a zero mtime; JSON is written with sorted, rounded values).
"""

from __future__ import annotations

import logging
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from mrsynth_cli import __version__
from mrsynth_cli.errors import InputError, OutputExistsError
from mrsynth_cli.io.atomic import atomic_path, write_bytes_atomic, write_json_atomic
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.phantom.signal import Protocol
from mrsynth_cli.phantom.simulate import PhantomSubject, simulate_subject, validate_parameters
from mrsynth_cli.phantom.tissues import DSEG_NAMES, Tissue

__all__ = ["simulate_dataset", "write_subject", "subject_rng", "subject_label", "contrast_filename", "MAX_SUBJECTS"]

log = logging.getLogger(__name__)

#: Upper bound on --subjects (a guard against typos such as 10000 for 10).
MAX_SUBJECTS = 9999

ICBM_NOTICE = (
    "Anatomy derived from the MNI ICBM152 2009a nonlinear symmetric template. Copyright (C) 1993-2009 "
    "Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. "
    "Permission to use, copy, modify, and distribute this software and its documentation for any purpose "
    "and without fee is hereby granted, provided that the above copyright notice appear in all copies. "
    "The authors and McGill University make no representations about the suitability of this software "
    "for any purpose. It is provided 'as is' without express or implied warranty."
)

_PHANTOM_TEXT = (
    "Simulated image of a digital phantom (mrsynth phantom), not acquired on a scanner: MNI ICBM152 2009a "
    "tissue maps warped per subject, literature T1/T2/PD at this field strength, analytic signal equation, "
    "partial volume, smooth bias field and Rician noise."
)


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of subject ``index`` (0-based) for ``seed``: SeedSequence(seed, spawn_key=(index,)).

    This equals ``SeedSequence(seed).spawn(n)[index]`` for any n > index, so a subject does not
    depend on how many subjects are simulated.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def subject_label(index: int, n_subjects: int) -> str:
    """``01``, ``02``, ... (at least two digits; more when there are 100 or more subjects)."""
    width = max(2, len(str(n_subjects)))
    return f"{index + 1:0{width}d}"


def contrast_filename(label: str, contrast: Contrast) -> str:
    """BIDS file name stem of a contrast, e.g. ``sub-01_ce-gadolinium_T1w``."""
    entities = "".join(f"_{k}-{v}" for k, v in contrast.bids_entities.items())
    return f"sub-{label}{entities}_{contrast.bids_suffix}"


def _check_int(value: object, name: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)  # type: ignore[arg-type]
        else:
            raise InputError(f"{name} must be a whole number, got {value!r}", f"give an integer {name}")
    value = int(value)  # type: ignore[arg-type]
    if value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}", f"give {name} >= {minimum}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} must be at most {maximum}, got {value}", f"give {name} <= {maximum}")
    return value


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} is a file, not a folder", "give a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(
            f"output folder {out_dir} is not empty", "choose a new folder or pass --force to write into it"
        )


def _round(obj):
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def _write_json(path: Path, obj: dict) -> None:
    write_json_atomic(path, _round(obj))


#: Float images are rounded to multiples of these (powers of two, far below the noise or the
#: precision of the ground truth), which makes the gzip'd files ~2x smaller and faster to write.
IMAGE_QUANTUM = 2.0**-3  # image units (white matter ~150-650, noise sigma ~5-30)
MAP_QUANTUM = 2.0**-12  # seconds for T1/T2 maps; fraction for PD and probability maps


def _quantise(data: np.ndarray, quantum: float) -> np.ndarray:
    out = np.asarray(data, dtype=np.float32) * np.float32(1.0 / quantum)
    np.rint(out, out=out)
    out *= np.float32(quantum)
    return out


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype, descrip: str) -> None:
    array = np.ascontiguousarray(data, dtype=dtype)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    header = image.header
    header.set_data_dtype(dtype)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = descrip.encode("ascii", "replace")[:79]
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(image, str(tmp))


def _image_sidecar(protocol: Protocol, subject: PhantomSubject, seed: int, index: int) -> dict[str, object]:
    key = protocol.contrast.value
    sidecar: dict[str, object] = {
        "Modality": "MR",
        "MagneticFieldStrength": subject.field_strength,
        "Manufacturer": "mrsynth phantom (simulated)",
        **protocol.sidecar(),
        "Phantom": True,
        "PhantomDescription": _PHANTOM_TEXT,
        "PhantomSequence": protocol.description,
        "PhantomSNR": subject.info["snr_vs_wm"][key],  # type: ignore[index]
        "PhantomBiasFieldAmplitude": subject.info["bias_amplitude"][key],  # type: ignore[index]
        "PhantomSeed": seed,
        "PhantomSubjectIndex": index,
    }
    return sidecar


def write_subject(subject: PhantomSubject, out_dir: Path, label: str, *, seed: int = 0, index: int = 0) -> Path:
    """Write one simulated subject into the BIDS dataset at ``out_dir``; return its folder.

    The NIfTI files are compressed in a few threads (zlib releases the GIL); each file's bytes do
    not depend on the order.
    """
    out_dir = Path(out_dir)
    anat = out_dir / f"sub-{label}" / "anat"
    deriv = out_dir / "derivatives" / "phantom" / f"sub-{label}" / "anat"
    affine = subject.affine
    prefix = f"sub-{label}"
    jobs: list[tuple[Path, np.ndarray, type, str, float | None]] = []
    for contrast, image in subject.images.items():
        stem = contrast_filename(label, contrast)
        jobs.append(
            (anat / f"{stem}.nii.gz", image, np.float32, f"mrsynth phantom {contrast.value} (simulated)", IMAGE_QUANTUM)
        )
        _write_json(anat / f"{stem}.json", _image_sidecar(subject.protocols[contrast], subject, seed, index))
    jobs.append((deriv / f"{prefix}_dseg.nii.gz", subject.labels, np.uint8, "mrsynth phantom tissue labels", None))
    write_bytes_atomic(deriv / f"{prefix}_dseg.tsv", _dseg_tsv().encode())
    for tissue, name in ((Tissue.GM, "GM"), (Tissue.WM, "WM"), (Tissue.CSF, "CSF")):
        jobs.append(
            (
                deriv / f"{prefix}_label-{name}_probseg.nii.gz",
                subject.fraction(tissue),
                np.float32,
                f"mrsynth phantom {name} volume fraction",
                MAP_QUANTUM,
            )
        )
    for desc, mask in (
        ("brain", subject.brain_mask),
        ("lesion", subject.lesion_mask),
        ("vessels", subject.vessel_mask),
    ):
        jobs.append((deriv / f"{prefix}_desc-{desc}_mask.nii.gz", mask, np.uint8, f"mrsynth phantom {desc} mask", None))
    maps = (
        ("T1map", subject.t1_map, "s", "true longitudinal relaxation time before gadolinium"),
        ("T2map", subject.t2_map, "s", "true transverse relaxation time before gadolinium"),
        ("PDmap", subject.pd_map, "arbitrary (pure water = 1)", "true proton density"),
    )
    for suffix, data, units, text in maps:
        jobs.append((deriv / f"{prefix}_{suffix}.nii.gz", data, np.float32, f"mrsynth phantom {suffix}", MAP_QUANTUM))
        _write_json(
            deriv / f"{prefix}_{suffix}.json",
            {
                "Units": units,
                "Description": f"{text}; partial-volume voxels hold the water-weighted fast-exchange "
                "average (PD = sum f_k PD_k, 1/T = sum f_k PD_k / T_k / PD); 0 in air",
                "MagneticFieldStrength": subject.field_strength,
                "Phantom": True,
            },
        )
    _write_json(
        deriv / f"{prefix}_desc-phantom_parameters.json",
        {"Phantom": True, "SubjectIndex": index, "Seed": seed, **subject.info},
    )

    def run(job: tuple[Path, np.ndarray, type, str, float | None]) -> None:
        path, data, dtype, descrip, quantum = job
        _save_nifti(path, data if quantum is None else _quantise(data, quantum), affine, dtype, descrip)

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(run, job) for job in jobs]:
            future.result()
    return out_dir / f"sub-{label}"


def _dseg_tsv() -> str:
    lines = ["index\tname"] + [f"{index}\t{name}" for index, name in sorted(DSEG_NAMES.items())]
    return "\n".join(lines) + "\n"


def _write_dataset_files(out_dir: Path, parameters: dict[str, object], labels: list[str]) -> None:
    _write_json(
        out_dir / "dataset_description.json",
        {
            "Name": "mrsynth phantom: simulated multi-contrast brain MRI",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": ICBM_NOTICE,
            "Authors": ["mrsynth phantom simulator"],
            "GeneratedBy": [
                {
                    "Name": "mrsynth phantom",
                    "Version": __version__,
                    "Description": "Digital phantom: every image is simulated, none was acquired on a scanner.",
                }
            ],
            "Phantom": True,
            "PhantomParameters": parameters,
        },
    )
    write_bytes_atomic(
        out_dir / "README.md",
        (
            "# mrsynth phantom\n\n"
            "Simulated brain MRI (a digital phantom), written by `mrsynth phantom` "
            f"(mrsynth {__version__}). No image in this dataset was acquired on a scanner.\n\n"
            f"Parameters: {', '.join(f'{k}={v}' for k, v in parameters.items())}.\n\n"
            "Contrasts per subject: T1w, T1w after gadolinium (ce-gadolinium), T2w, PDw, FLAIR and TOF-MRA "
            "(angio). Ground truth (tissue labels and fractions, brain/lesion/vessel masks, true T1/T2/PD maps) "
            "is under derivatives/phantom.\n\n"
            f"## Licence notice\n\n{ICBM_NOTICE}\n"
        ).encode(),
    )
    write_bytes_atomic(
        out_dir / "participants.tsv", ("participant_id\n" + "".join(f"sub-{x}\n" for x in labels)).encode()
    )
    deriv = out_dir / "derivatives" / "phantom"
    _write_json(
        deriv / "dataset_description.json",
        {
            "Name": "mrsynth phantom ground truth",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "License": ICBM_NOTICE,
            "GeneratedBy": [{"Name": "mrsynth phantom", "Version": __version__}],
            "SourceDatasets": [{"URL": "../../"}],
        },
    )
    write_bytes_atomic(deriv / "dseg.tsv", _dseg_tsv().encode())


def simulate_dataset(
    out_dir: str | Path,
    n_subjects: int,
    seed: int,
    resolution_mm: float = 1.0,
    lesions: str = "tumour",
    field_strength: float = 3.0,
    skull: bool = True,
    force: bool = False,
) -> list[Path]:
    """Simulate ``n_subjects`` subjects into a BIDS dataset at ``out_dir``; return the subject folders.

    Subject k (0-based) is drawn from :func:`subject_rng` ``(seed, k)``, so it is the same whatever
    ``n_subjects`` is, and the same arguments give byte-identical files.

    Args:
        out_dir: dataset folder; created if missing; must be empty unless ``force``.
        n_subjects: number of subjects (>= 1).
        seed: random seed (>= 0).
        resolution_mm: isotropic voxel size, 0.5-4 mm.
        lesions: ``"tumour"``, ``"ms"`` or ``"none"``.
        field_strength: 1.5 or 3 tesla.
        skull: simulate skull and scalp (False: only the intracranial content).
        force: write into a non-empty folder, replacing files of the same name.

    Raises:
        InputError: a bad argument (one-line message with a hint).
        OutputExistsError: ``out_dir`` is not empty and ``force`` is false.
    """
    out_dir = Path(out_dir)
    n = _check_int(n_subjects, "the number of subjects", 1, MAX_SUBJECTS)
    seed = _check_int(seed, "the seed", 0, 2**63 - 1)
    resolution, kind, field_t = validate_parameters(resolution_mm, lesions, field_strength)
    _check_out_dir(out_dir, force)
    labels = [subject_label(i, n) for i in range(n)]
    parameters = {
        "subjects": n,
        "seed": seed,
        "resolution_mm": resolution,
        "lesions": kind,
        "field_strength_T": field_t,
        "skull": bool(skull),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_dataset_files(out_dir, parameters, labels)
    folders = []
    for index, label in enumerate(labels):
        log.info("simulating sub-%s (%d of %d)", label, index + 1, n)
        subject = simulate_subject(subject_rng(seed, index), resolution, kind, field_t, skull)
        folders.append(write_subject(subject, out_dir, label, seed=seed, index=index))
        del subject
    return folders
