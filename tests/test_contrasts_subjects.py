"""Contrast names, file-name inference, subject discovery and sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrsynth_cli.errors import ContrastError, InputError
from mrsynth_cli.io.contrasts import Contrast, contrast_from_filename, parse_contrast, parse_input_spec
from mrsynth_cli.io.subjects import discover_subjects, read_sidecar
from tests.conftest import AFFINES, blob, write_nifti


@pytest.mark.parametrize(
    ("name", "contrast"),
    [
        ("t1", Contrast.T1), ("T1w", Contrast.T1), ("t1n", Contrast.T1), ("T1ce", Contrast.T1CE),
        ("t1c", Contrast.T1CE), ("T1POST", Contrast.T1CE), ("t1gd", Contrast.T1CE), ("T2", Contrast.T2),
        ("t2w", Contrast.T2), ("PD", Contrast.PD), ("PDw", Contrast.PD), ("flair", Contrast.FLAIR),
        ("t2f", Contrast.FLAIR), ("T2-FLAIR", Contrast.FLAIR), ("tof", Contrast.TOF), ("angio", Contrast.TOF),
        ("MRA", Contrast.TOF),
    ],
)
def test_parse_contrast_aliases(name: str, contrast: Contrast) -> None:
    assert parse_contrast(name) is contrast


def test_unknown_contrast_suggests_and_lists() -> None:
    with pytest.raises(ContrastError) as info:
        parse_contrast("flari")
    text = info.value.one_line()
    assert "unknown contrast 'flari'" in text and "did you mean 'FLAIR'" in text and "T1ce" in text


@pytest.mark.parametrize(
    ("filename", "contrast"),
    [
        ("sub-01_T1w.nii.gz", Contrast.T1),
        ("sub-01_ses-2_ce-gadolinium_T1w.nii.gz", Contrast.T1CE),
        ("sub-01_T2w.nii", Contrast.T2),
        ("sub-01_PDw.nii.gz", Contrast.PD),
        ("sub-01_FLAIR.nii.gz", Contrast.FLAIR),
        ("sub-01_angio.nii.gz", Contrast.TOF),
        ("BraTS-GLI-00001-000-t1n.nii.gz", Contrast.T1),
        ("BraTS-GLI-00001-000-t1c.nii.gz", Contrast.T1CE),
        ("BraTS-GLI-00001-000-t2w.nii.gz", Contrast.T2),
        ("BraTS-GLI-00001-000-t2f.nii.gz", Contrast.FLAIR),
        ("T1.nii.gz", Contrast.T1),
        ("T1POST_N4_noneck.nii.gz", Contrast.T1CE),
        ("study1_T2W.nii.gz", Contrast.T2),
        ("patient_T2_FLAIR.nii.gz", Contrast.FLAIR),
        ("chris_MRA.nii.gz", Contrast.TOF),
        ("TCGA-DU-7294_fla_bet.nii.gz", Contrast.FLAIR),
        ("atlas_bet_t1c_mask.nii.gz", None),
        ("brainmask.nii.gz", None),
        ("GOLD_STANDARD.nii.gz", None),
        ("sub-01_dseg.nii.gz", None),
    ],
)
def test_contrast_from_filename(filename: str, contrast: Contrast | None) -> None:
    assert contrast_from_filename(filename) is contrast


def test_ambiguous_filename_is_an_error() -> None:
    with pytest.raises(ContrastError, match="more than one contrast"):
        contrast_from_filename("t1_t2_fused.nii.gz")


def test_input_spec_with_empty_path_says_so() -> None:
    with pytest.raises(ContrastError, match="gives no file"):
        parse_input_spec("t1=")


def test_input_spec_forms(tmp_path: Path) -> None:
    assert parse_input_spec("t1=/data/scan.nii.gz") == (Contrast.T1, Path("/data/scan.nii.gz"))
    assert parse_input_spec("/data/sub-01_FLAIR.nii.gz") == (Contrast.FLAIR, Path("/data/sub-01_FLAIR.nii.gz"))
    with pytest.raises(ContrastError, match="cannot tell the contrast"):
        parse_input_spec("/data/scan.nii.gz")
    with pytest.raises(ContrastError, match="unknown contrast 'dwi'"):
        parse_input_spec("dwi=/data/scan.nii.gz")


def _touch_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, blob(), AFFINES["ras"])


def test_discover_bids_with_sessions_sorted(tmp_path: Path) -> None:
    for sub in ("sub-02", "sub-01"):
        _touch_nifti(tmp_path / sub / "anat" / f"{sub}_T1w.nii.gz")
        _touch_nifti(tmp_path / sub / "anat" / f"{sub}_FLAIR.nii.gz")
    _touch_nifti(tmp_path / "sub-03" / "ses-b" / "anat" / "sub-03_ses-b_T2w.nii.gz")
    _touch_nifti(tmp_path / "sub-03" / "ses-a" / "anat" / "sub-03_ses-a_ce-gadolinium_T1w.nii.gz")
    subjects = discover_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["sub-01", "sub-02", "sub-03_ses-a", "sub-03_ses-b"]
    assert subjects[0].contrasts == [Contrast.T1, Contrast.FLAIR]
    assert subjects[2].contrasts == [Contrast.T1CE]


def test_discover_brats_and_plain_folders(tmp_path: Path) -> None:
    for case in ("BraTS-GLI-00002-000", "BraTS-GLI-00001-000"):
        for suffix in ("t1n", "t1c", "t2w", "t2f"):
            _touch_nifti(tmp_path / case / f"{case}-{suffix}.nii.gz")
        _touch_nifti(tmp_path / case / f"{case}-seg.nii.gz")
    _touch_nifti(tmp_path / "zz_plain" / "T1.nii.gz")
    _touch_nifti(tmp_path / "zz_plain" / "FLAIR.nii.gz")
    (tmp_path / "notes").mkdir()
    subjects = discover_subjects(tmp_path)
    assert [s.subject_id for s in subjects] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "zz_plain"]
    assert subjects[0].contrasts == [Contrast.T1, Contrast.T1CE, Contrast.T2, Contrast.FLAIR]


def test_discover_refuses_duplicates_and_empty(tmp_path: Path) -> None:
    _touch_nifti(tmp_path / "s" / "T1.nii.gz")
    _touch_nifti(tmp_path / "s" / "mprage.nii.gz")
    with pytest.raises(ContrastError, match="two T1 files"):
        discover_subjects(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no subjects"):
        discover_subjects(tmp_path / "empty")


def test_sidecar_reading(tmp_path: Path) -> None:
    nifti = _touch_nifti(tmp_path / "sub-01_FLAIR.nii.gz")
    assert read_sidecar(nifti).repetition_time is None
    sidecar = tmp_path / "sub-01_FLAIR.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 9.0, "EchoTime": 0.1, "InversionTime": 2.5, "MagneticFieldStrength": 3}))
    acq = read_sidecar(nifti)
    assert (acq.repetition_time, acq.echo_time, acq.inversion_time, acq.field_strength) == (9.0, 0.1, 2.5, 3.0)
    sidecar.write_text(json.dumps({"RepetitionTime": 9000}))
    with pytest.raises(InputError, match="milliseconds"):
        read_sidecar(nifti)
    sidecar.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_sidecar(nifti)
    sidecar.write_text(json.dumps({"EchoTime": "long"}))
    with pytest.raises(InputError, match="not a positive number"):
        read_sidecar(nifti)
