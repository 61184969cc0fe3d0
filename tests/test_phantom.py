"""The phantom simulator: determinism, contrast physics, BIDS output, argument errors, QC montage.

Simulations run at 3-4 mm so that the whole file takes well under a minute.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mrsynth_cli.errors import InputError, OutputExistsError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.phantom import Tissue, simulate_dataset, simulate_subject, subject_rng
from mrsynth_cli.phantom.signal import flair_null_inversion_time, inversion_recovery, spin_echo
from mrsynth_cli.phantom.tissues import FIELD_STRENGTHS, tissue_params
from mrsynth_cli.qc import write_montage

RES = 4.0  # mm, for the dataset/determinism tests
CONTRAST_RES = 3.0  # mm, for the tissue-contrast tests

ANAT_FILES = {
    Contrast.T1: "T1w",
    Contrast.T1CE: "ce-gadolinium_T1w",
    Contrast.T2: "T2w",
    Contrast.PD: "PDw",
    Contrast.FLAIR: "FLAIR",
    Contrast.TOF: "angio",
}


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", params=FIELD_STRENGTHS, ids=lambda f: f"{f:g}T")
def tumour_subject(request):
    return simulate_subject(subject_rng(11, 0), CONTRAST_RES, "tumour", request.param, True)


@pytest.fixture(scope="module")
def ms_subject():
    return simulate_subject(subject_rng(5, 0), CONTRAST_RES, "ms", 3.0, True)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two identical 2-subject datasets and a 1-subject one, same seed; and one with another seed."""
    root = tmp_path_factory.mktemp("phantom")
    a = simulate_dataset(root / "a", 2, seed=3, resolution_mm=RES)
    b = simulate_dataset(root / "b", 2, seed=3, resolution_mm=RES)
    c = simulate_dataset(root / "c", 1, seed=3, resolution_mm=RES)
    d = simulate_dataset(root / "d", 1, seed=4, resolution_mm=RES)
    return {"root": root, "a": a, "b": b, "c": c, "d": d}


def _mean(image: np.ndarray, subject, tissue: Tissue, threshold: float = 0.6) -> float:
    sel = subject.fraction(tissue) >= threshold
    assert sel.sum() >= 3, f"too few {tissue.name} voxels at {threshold}"
    return float(image[sel].mean())


# ------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_arrays_other_seed_differs():
    one = simulate_subject(subject_rng(7, 0), RES, "tumour", 3.0, True)
    two = simulate_subject(subject_rng(7, 0), RES, "tumour", 3.0, True)
    other = simulate_subject(subject_rng(8, 0), RES, "tumour", 3.0, True)
    for contrast in Contrast:
        assert one.images[contrast].dtype == np.float32
        np.testing.assert_array_equal(one.images[contrast], two.images[contrast])
        assert not np.array_equal(one.images[contrast], other.images[contrast])
    np.testing.assert_array_equal(one.labels, two.labels)
    np.testing.assert_array_equal(one.t1_map, two.t1_map)
    np.testing.assert_array_equal(one.affine, two.affine)
    assert not np.array_equal(one.labels, other.labels)


def test_same_seed_gives_byte_identical_files(datasets):
    a_root, b_root = datasets["root"] / "a", datasets["root"] / "b"
    files_a = sorted(p.relative_to(a_root) for p in a_root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b_root) for p in b_root.rglob("*") if p.is_file())
    assert files_a == files_b
    assert len(files_a) > 40
    for rel in files_a:
        assert (a_root / rel).read_bytes() == (b_root / rel).read_bytes(), rel
    t1_other = datasets["root"] / "d" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert t1_other.read_bytes() != (a_root / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes()


def test_subject_does_not_depend_on_number_of_subjects(datasets):
    a_root, c_root = datasets["root"] / "a", datasets["root"] / "c"
    compared = 0
    for folder in ("sub-01", "derivatives/phantom/sub-01"):
        for path in sorted((c_root / folder).rglob("*")):
            if path.is_file():
                assert path.read_bytes() == (a_root / path.relative_to(c_root)).read_bytes(), path
                compared += 1
    assert compared > 20


def test_subject_rng_is_the_seed_sequence_child():
    expected = np.random.default_rng(np.random.SeedSequence(5).spawn(4)[2]).random(4)
    np.testing.assert_array_equal(subject_rng(5, 2).random(4), expected)


def test_anatomy_does_not_depend_on_lesions_or_resolution():
    plain = simulate_subject(subject_rng(2, 0), RES, "none", 3.0, True)
    tumour = simulate_subject(subject_rng(2, 0), RES, "tumour", 3.0, True)
    coarse = simulate_subject(subject_rng(2, 0), 3.0, "none", 3.0, True)
    assert plain.info["transform"] == tumour.info["transform"] == coarse.info["transform"]
    assert plain.info["vessels"] == coarse.info["vessels"]
    assert plain.info["snr_vs_wm"] == coarse.info["snr_vs_wm"]
    assert not plain.lesion_mask.any() and tumour.lesion_mask.any()


# ------------------------------------------------------------------------------------------------
# Physics: tissue contrast per sequence


def test_t1w_white_brighter_than_grey_csf_dark(tumour_subject):
    img = tumour_subject.images[Contrast.T1]
    wm, gm, csf = (_mean(img, tumour_subject, t) for t in (Tissue.WM, Tissue.GM, Tissue.CSF))
    assert wm > gm > csf


def test_t2w_csf_brightest_then_grey_then_white(tumour_subject):
    img = tumour_subject.images[Contrast.T2]
    wm, gm, csf = (_mean(img, tumour_subject, t) for t in (Tissue.WM, Tissue.GM, Tissue.CSF))
    assert csf > gm > wm


def test_pdw_grey_slightly_brighter_than_white(tumour_subject):
    img = tumour_subject.images[Contrast.PD]
    wm, gm = (_mean(img, tumour_subject, t) for t in (Tissue.WM, Tissue.GM))
    assert 1.0 < gm / wm < 1.4


def test_flair_csf_darkest_and_oedema_bright(tumour_subject):
    img = tumour_subject.images[Contrast.FLAIR]
    wm, gm, csf = (_mean(img, tumour_subject, t) for t in (Tissue.WM, Tissue.GM, Tissue.CSF))
    assert csf < 0.5 * wm and csf < 0.5 * gm
    oedema = _mean(img, tumour_subject, Tissue.OEDEMA, 0.5)
    assert oedema > 1.3 * wm and oedema > gm


def test_t1ce_enhancing_rim_brighter_than_on_t1w(tumour_subject):
    rim_pre = _mean(tumour_subject.images[Contrast.T1], tumour_subject, Tissue.ENHANCING_TUMOUR, 0.4)
    rim_post = _mean(tumour_subject.images[Contrast.T1CE], tumour_subject, Tissue.ENHANCING_TUMOUR, 0.4)
    assert rim_post > 1.4 * rim_pre
    wm_post = _mean(tumour_subject.images[Contrast.T1CE], tumour_subject, Tissue.WM)
    assert rim_post > 1.4 * wm_post


def test_tof_vessels_brighter_than_tissue(tumour_subject):
    img = tumour_subject.images[Contrast.TOF]
    vessels = _mean(img, tumour_subject, Tissue.BLOOD, 0.5)
    wm, gm = (_mean(img, tumour_subject, t) for t in (Tissue.WM, Tissue.GM))
    assert vessels > 2.0 * wm and vessels > 2.0 * gm
    assert tumour_subject.vessel_mask.sum() > 10


def test_ms_lesions_bright_on_flair_and_t2_mildly_dark_on_t1(ms_subject):
    lesion = Tissue.MS_LESION
    flair, t2, t1 = (ms_subject.images[c] for c in (Contrast.FLAIR, Contrast.T2, Contrast.T1))
    assert _mean(flair, ms_subject, lesion, 0.5) > 1.2 * _mean(flair, ms_subject, Tissue.WM)
    assert _mean(t2, ms_subject, lesion, 0.5) > 1.3 * _mean(t2, ms_subject, Tissue.WM)
    assert _mean(t1, ms_subject, lesion, 0.5) < _mean(t1, ms_subject, Tissue.WM)
    assert len(ms_subject.info["lesion_list"]) >= 6


def test_quantitative_maps_hold_literature_values(tumour_subject):
    field = tumour_subject.field_strength
    for tissue in (Tissue.WM, Tissue.GM):
        sel = tumour_subject.fraction(tissue) >= 0.98
        expected = tissue_params(tissue, field)
        assert np.median(tumour_subject.t1_map[sel]) == pytest.approx(expected.t1, rel=0.05)
        assert np.median(tumour_subject.t2_map[sel]) == pytest.approx(expected.t2, rel=0.05)
        assert np.median(tumour_subject.pd_map[sel]) == pytest.approx(expected.pd, rel=0.05)
    no_water = tumour_subject.pd_map == 0
    assert no_water[0, 0, 0] and no_water[-1, -1, -1]  # the corners are air
    assert not tumour_subject.t1_map[no_water].any() and not tumour_subject.t2_map[no_water].any()


def test_fractions_are_a_partition(tumour_subject):
    total = sum(f for f in tumour_subject.fractions.values())
    assert float(total.min()) >= -1e-5 and float(total.max()) <= 1.0 + 1e-4
    for f in tumour_subject.fractions.values():
        assert float(f.min()) >= -1e-5


def test_signal_equations():
    t1_csf = 4.3
    ti = flair_null_inversion_time(t1_csf, 9.0)
    assert inversion_recovery(1.0, t1_csf, 2.0, 9.0, ti, 0.1) == pytest.approx(0.0, abs=1e-9)
    assert flair_null_inversion_time(t1_csf, 1e6) == pytest.approx(t1_csf * math.log(2.0))
    assert spin_echo(0.8, 1.0, 0.1, 0.5, 0.01) == pytest.approx(0.8 * (1 - math.exp(-0.5)) * math.exp(-0.1))


def test_no_skull_leaves_only_intracranial_content():
    subject = simulate_subject(subject_rng(1, 0), RES, "none", 1.5, skull=False)
    for tissue in (Tissue.BONE, Tissue.FAT, Tissue.MUSCLE, Tissue.DURA):
        assert not subject.fraction(tissue).any()
    assert subject.brain_mask.any()
    labels = set(np.unique(subject.labels).tolist())
    assert labels <= {0, int(Tissue.CSF), int(Tissue.GM), int(Tissue.WM), int(Tissue.BLOOD), int(Tissue.CHOROID_PLEXUS)}


# ------------------------------------------------------------------------------------------------
# Output: BIDS layout, sidecars in seconds, geometry


def test_bids_layout_sidecars_and_geometry(datasets):
    root = datasets["root"] / "a"
    assert datasets["a"] == [root / "sub-01", root / "sub-02"]
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] and description["DatasetType"] == "raw"
    assert "Louis Collins" in description["License"]
    for label in ("01", "02"):
        anat = root / f"sub-{label}" / "anat"
        for contrast, suffix in ANAT_FILES.items():
            image = nib.load(str(anat / f"sub-{label}_{suffix}.nii.gz"))
            assert image.get_data_dtype() == np.float32
            assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
            assert np.allclose(np.linalg.norm(image.affine[:3, :3], axis=0), RES)
            centre = image.affine @ np.array([*((np.array(image.shape) - 1) / 2.0), 1.0])
            assert np.allclose(centre[:3], 0.0, atol=1e-6)
            sidecar = json.loads((anat / f"sub-{label}_{suffix}.json").read_text())
            assert sidecar["Phantom"] is True and sidecar["MagneticFieldStrength"] == 3.0
            assert 0.0 < sidecar["RepetitionTime"] < 20.0  # seconds, not ms
            assert 0.0 < sidecar["EchoTime"] < 0.5
            if contrast is Contrast.FLAIR:
                assert 1.5 < sidecar["InversionTime"] < 3.5
            else:
                assert "InversionTime" not in sidecar
            if contrast is Contrast.TOF:
                assert 10.0 <= sidecar["FlipAngle"] <= 40.0 and sidecar["RepetitionTime"] < 0.1
            if contrast is Contrast.T1CE:
                assert sidecar["ContrastBolusIngredient"] == "GADOLINIUM"
        deriv = root / "derivatives" / "phantom" / f"sub-{label}" / "anat"
        dseg = nib.load(str(deriv / f"sub-{label}_dseg.nii.gz"))
        assert dseg.get_data_dtype() == np.uint8
        lines = (deriv / f"sub-{label}_dseg.tsv").read_text().splitlines()
        assert lines[0] == "index\tname" and "3\tWM" in lines
        assert int(np.asarray(dseg.dataobj).max()) <= len(lines) - 2
        for name in (
            "label-GM_probseg",
            "label-WM_probseg",
            "label-CSF_probseg",
            "desc-brain_mask",
            "desc-lesion_mask",
            "desc-vessels_mask",
            "T1map",
            "T2map",
            "PDmap",
        ):
            assert (deriv / f"sub-{label}_{name}.nii.gz").is_file(), name
        t1map = json.loads((deriv / f"sub-{label}_T1map.json").read_text())
        assert t1map["Units"] == "s"
        t1 = np.asarray(nib.load(str(deriv / f"sub-{label}_T1map.nii.gz")).dataobj)
        assert 0.0 <= float(t1.min()) and float(t1.max()) < 6.0  # seconds
    assert (root / "derivatives" / "phantom" / "dataset_description.json").is_file()
    assert (root / "participants.tsv").read_text().split() == ["participant_id", "sub-01", "sub-02"]


# ------------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"resolution_mm": 0.4}, "resolution"),
        ({"resolution_mm": 5.0}, "resolution"),
        ({"resolution_mm": float("nan")}, "resolution"),
        ({"n_subjects": 0}, "subjects"),
        ({"n_subjects": 2.5}, "subjects"),
        ({"seed": -1}, "seed"),
        ({"lesions": "glioma"}, "lesion"),
        ({"field_strength": 7.0}, "field strength"),
    ],
)
def test_bad_arguments_raise_one_line_input_error(tmp_path, kwargs, words):
    args = {"n_subjects": 1, "seed": 0, **kwargs}
    with pytest.raises(InputError) as info:
        simulate_dataset(tmp_path / "out", **args)
    assert words in info.value.one_line() and "\n" not in info.value.one_line()
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_non_empty_folder_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError) as info:
        simulate_dataset(out, 1, seed=0, resolution_mm=RES)
    assert "--force" in info.value.one_line()
    folders = simulate_dataset(out, 1, seed=0, resolution_mm=RES, lesions="none", force=True)
    assert (folders[0] / "anat" / "sub-01_T1w.nii.gz").is_file() and (out / "keep.txt").is_file()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError):
        simulate_dataset(a_file, 1, seed=0, resolution_mm=RES)


# ------------------------------------------------------------------------------------------------
# QC montage


def test_write_montage(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.random((20, 24, 16)).astype(np.float32)
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    path = write_montage({"T1w": volume, "TOF": volume * 2}, tmp_path / "m.png", affine=affine)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 200 and height > 3 * 50  # T1w, TOF and the TOF MIP rows
    assert not list(tmp_path.glob(".*tmp*"))
