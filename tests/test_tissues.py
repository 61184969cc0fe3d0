"""Tissue segmentation: N4 and the embedded HMRF-EM on a 2.5 mm phantom, class naming, input errors,
and FSL FAST through a fake FSLDIR whose ``fast`` checks the command line it receives."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrsynth_cli.errors import InputError, RuntimeFailure
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.volume import Volume
from mrsynth_cli.phantom import simulate_subject, subject_rng
from mrsynth_cli.phantom.tissues import Tissue
from mrsynth_cli.preprocessing.bias import n4_bias_correct
from mrsynth_cli.preprocessing.tissues import (
    CLASS_NAMES,
    HmrfSettings,
    class_order,
    primary_index,
    segment_tissues,
)

RESOLUTION_MM = 2.5


@pytest.fixture(scope="module")
def phantom():
    """A skull-free tumour phantom at 2.5 mm (about 110 000 brain voxels)."""
    return simulate_subject(subject_rng(3, 0), resolution_mm=RESOLUTION_MM, lesions="tumour", skull=False)


def as_volume(phantom, contrast: Contrast) -> Volume:
    path = Path(f"{contrast.value}.nii.gz")
    return Volume(phantom.images[contrast], phantom.affine, nib.Nifti1Header(), path, contrast)


def brain_of(phantom) -> Volume:
    return Volume(phantom.brain_mask.astype(np.uint8), phantom.affine, nib.Nifti1Header(), Path("brain_mask.nii.gz"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def tissue_dice(result, phantom) -> dict[str, float]:
    brain = phantom.brain_mask
    labels = result.labels.data
    return {
        name: dice((labels == k) & brain, (phantom.labels == int(tissue)) & brain)
        for k, (name, tissue) in enumerate(zip(CLASS_NAMES, (Tissue.CSF, Tissue.GM, Tissue.WM), strict=True), start=1)
    }


@pytest.fixture(scope="module")
def multichannel(phantom):
    """The full embedded path (N4, HMRF-EM, abnormal class) on T1 + T2 + FLAIR."""
    volumes = [as_volume(phantom, c) for c in (Contrast.T1, Contrast.T2, Contrast.FLAIR)]
    return segment_tissues(volumes, brain_of(phantom), method="embedded")


# --------------------------------------------------------------------------------------------------
# N4 bias correction


def test_n4_removes_a_known_smooth_field(phantom) -> None:
    t1 = as_volume(phantom, Contrast.T1)
    brain = phantom.brain_mask
    ramp = np.indices(t1.shape)[0] / t1.shape[0]
    imposed = np.exp(0.5 * (ramp - 0.5)).astype(np.float32)  # -22 % to +28 % across the head
    biased = t1.with_data(t1.data * imposed)
    result = n4_bias_correct(biased, brain)
    pure_wm = brain & (phantom.fraction(Tissue.WM) > 0.95)

    def cv(data: np.ndarray) -> float:
        return float(data[pure_wm].std() / data[pure_wm].mean())

    # Measured: 0.092 before, 0.034 after (the phantom's own field goes too: 0.038 without the ramp).
    assert cv(result.corrected.data) < 0.5 * cv(biased.data)
    log_field = np.log(result.field.data[brain])
    assert abs(float(log_field.mean())) < 1e-4  # the mean intensity inside the mask is kept
    assert np.corrcoef(log_field, np.log(imposed[brain]))[0, 1] > 0.8
    np.testing.assert_array_equal(n4_bias_correct(biased, brain).corrected.data, result.corrected.data)
    with pytest.raises(InputError, match="too few positive voxels"):
        n4_bias_correct(biased, np.zeros(t1.shape, dtype=bool))


# --------------------------------------------------------------------------------------------------
# Embedded HMRF-EM


def test_embedded_multichannel_matches_the_phantom(multichannel, phantom) -> None:
    scores = tissue_dice(multichannel, phantom)
    # Measured 0.90 / 0.88 / 0.87 (2.5 mm, so more partial volume than at 1 mm).
    assert scores["CSF"] >= 0.85 and scores["GM"] >= 0.83 and scores["WM"] >= 0.82, scores
    assert multichannel.method == "embedded-hmrf"
    assert multichannel.abnormal is not None
    # The tumour (necrosis, enhancing rim, oedema) is the abnormal class; measured 0.72.
    assert dice(multichannel.abnormal.data > 0, phantom.lesion_mask) >= 0.6
    details = multichannel.details
    assert details["abnormal"]["components"] >= 1 and len(details["bias_correction"]) == 3
    assert details["classes"]["CSF"]["mean"][1] > details["classes"]["GM"]["mean"][1]  # CSF brightest on T2


def test_pve_maps_and_labels_are_consistent(multichannel, phantom) -> None:
    brain = phantom.brain_mask
    pve = np.stack([multichannel.pve[name].data for name in CLASS_NAMES])
    assert pve.dtype == np.float32 and pve.min() >= 0.0
    np.testing.assert_allclose(pve.sum(0)[brain], 1.0, atol=1e-5)
    assert not pve[:, ~brain].any()
    labels = multichannel.labels.data
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert not labels[~brain].any() and labels[brain].min() >= 1
    tissue = brain & (labels != 4)
    np.testing.assert_array_equal(labels[tissue], pve.argmax(0)[tissue] + 1)
    np.testing.assert_array_equal(multichannel.abnormal.data, (labels == 4).astype(np.uint8))


def test_t1_alone_is_deterministic_and_has_no_abnormal_class(phantom) -> None:
    settings = HmrfSettings(bias_correction=False)  # N4 is covered above; this keeps the test fast
    first = segment_tissues([as_volume(phantom, Contrast.T1)], brain_of(phantom), "embedded", hmrf=settings)
    second = segment_tissues([as_volume(phantom, Contrast.T1)], brain_of(phantom), "embedded", hmrf=settings)
    np.testing.assert_array_equal(first.labels.data, second.labels.data)
    for name in CLASS_NAMES:
        np.testing.assert_array_equal(first.pve[name].data, second.pve[name].data)
    assert first.abnormal is None and "skipped" in first.details["abnormal"]
    # One channel cannot tell a CSF-WM mixture from GM: that mixture is left out of the model.
    assert first.details["active_mixtures"] == ["CSF-GM", "GM-WM"]
    scores = tissue_dice(first, phantom)
    # Measured 0.80 / 0.78 / 0.74 without bias correction.
    assert scores["CSF"] >= 0.72 and scores["GM"] >= 0.70 and scores["WM"] >= 0.65, scores


# --------------------------------------------------------------------------------------------------
# Class naming


@pytest.mark.parametrize(
    ("means", "contrast", "expected"),
    [
        ([1.1, 0.6, 0.95], Contrast.T1, [1, 2, 0]),  # T1: CSF < GM < WM
        ([1.1, 0.6, 0.95], Contrast.T1CE, [1, 2, 0]),
        ([0.7, 2.3, 1.1], Contrast.T2, [1, 2, 0]),  # T2: CSF > GM > WM
        ([0.95, 1.0, 1.05], Contrast.PD, [2, 1, 0]),
        ([0.98, 0.2, 1.05], Contrast.FLAIR, [1, 2, 0]),  # FLAIR: CSF darkest, GM brighter than WM
        ([0.6, 1.1, 0.95], None, [0, 2, 1]),  # unknown contrast counts as T1
    ],
)
def test_class_order(means: list[float], contrast: Contrast | None, expected: list[int]) -> None:
    assert class_order(np.array(means), contrast or Contrast.T1) == expected


def test_primary_channel_prefers_t1() -> None:
    def vol(contrast: Contrast | None) -> Volume:
        return Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), nib.Nifti1Header(), Path("x.nii.gz"), contrast)

    assert primary_index([vol(Contrast.FLAIR), vol(Contrast.T2), vol(Contrast.T1)]) == 2
    assert primary_index([vol(Contrast.FLAIR), vol(Contrast.T2)]) == 1
    assert primary_index([vol(Contrast.FLAIR)]) == 0
    assert primary_index([vol(Contrast.FLAIR), vol(None)]) == 1  # no contrast: treated as T1


# --------------------------------------------------------------------------------------------------
# Input errors


def _small(shape: tuple[int, int, int] = (20, 20, 20), affine: np.ndarray | None = None) -> Volume:
    data = np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)
    return Volume(data, np.eye(4) if affine is None else affine, nib.Nifti1Header(), Path("t1.nii.gz"), Contrast.T1)


def _mask(count: int, shape: tuple[int, int, int] = (20, 20, 20)) -> Volume:
    data = np.zeros(shape, np.uint8)
    data.reshape(-1)[:count] = 1
    return Volume(data, np.eye(4), nib.Nifti1Header(), Path("mask.nii.gz"))


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("empty mask", "is empty"),
        ("tiny mask", "holds only 500 voxels"),
        ("grid mismatch", "different grids"),
        ("unknown method", "unknown tissue segmentation method 'spm'"),
        ("fsl without FSL", "FSL FAST was requested"),
        ("four classes", "only 3 (CSF, GM, WM)"),
        ("no volumes", "no input volumes"),
    ],
)
def test_input_errors_are_one_line(case: str, fragment: str, monkeypatch) -> None:
    monkeypatch.delenv("FSLDIR", raising=False)
    monkeypatch.delenv("FSLDEVDIR", raising=False)
    volumes, mask, kwargs = [_small()], _mask(8000), {}
    if case == "empty mask":
        mask = _mask(0)
    elif case == "tiny mask":
        mask = _mask(500)
    elif case == "grid mismatch":
        volumes.append(_small(affine=np.diag([2.0, 2.0, 2.0, 1.0])))
    elif case == "unknown method":
        kwargs["method"] = "spm"
    elif case == "fsl without FSL":
        kwargs["method"] = "fsl"
    elif case == "four classes":
        kwargs["n_classes"] = 4
    elif case == "no volumes":
        volumes = []
    with pytest.raises(InputError) as info:
        segment_tissues(volumes, mask, **kwargs)
    assert fragment in info.value.message
    assert "\n" not in info.value.one_line() and info.value.hint


# --------------------------------------------------------------------------------------------------
# FSL FAST through a fake FSLDIR (the command line is checked by the fake tool itself)

FAKE_FAST = """\
#!{python}
import os, sys
import nibabel as nib
import numpy as np

args = sys.argv[1:]
problems = []
def value(flag):
    return args[args.index(flag) + 1] if flag in args[:-1] else None
for flag, expected in {expected!r}.items():
    if value(flag) != expected:
        problems.append(f"{{flag}} is {{value(flag)}}, expected {{expected}}")
for flag in {absent!r}:
    if flag in args:
        problems.append(f"unexpected {{flag}}")
out = [a[len("--out="):] for a in args if a.startswith("--out=")]
if len(out) != 1:
    problems.append("no single --out=<prefix>")
images = [a for a in args if a.endswith(".nii.gz") and not a.startswith("--")]
if len(images) != {channels} or not all(os.path.isfile(i) for i in images):
    problems.append(f"expected {channels} existing input images, got {{images}}")
if os.environ.get("FSLOUTPUTTYPE") != "NIFTI_GZ":
    problems.append("FSLOUTPUTTYPE is " + str(os.environ.get("FSLOUTPUTTYPE")))
with open({log!r}, "w") as handle:
    handle.write(" ".join(args) + "\\n" + "\\n".join(problems))
if problems or {fail!r}:
    sys.stderr.write("Error: fake fast refused: " + "; ".join(problems or ["asked to fail"]) + "\\n")
    sys.exit(1)
if {write!r}:
    first = nib.load(images[0])
    data = np.asarray(first.dataobj, dtype=np.float32)
    inside = data != 0
    low, high = np.percentile(data[inside], [25, 60])
    dark, mid, bright = inside & (data < low), inside & (data >= low) & (data < high), inside & (data >= high)
    hole = tuple(np.argwhere(inside)[len(np.argwhere(inside)) // 2])
    for k, part in enumerate((bright, dark, mid)):  # not in intensity order: the caller must sort them
        pve = part.astype(np.float32)
        pve[hole] = 0.0  # a brain voxel FAST left out
        nib.save(nib.Nifti1Image(pve, first.affine), out[0] + f"_pve_{{k}}.nii.gz")
"""


def make_fake_fast(
    tmp_path: Path,
    monkeypatch,
    *,
    expected: dict[str, str],
    absent: tuple[str, ...],
    channels: int,
    fail: bool = False,
    write: bool = True,
) -> Path:
    fsldir = tmp_path / "fsl"
    (fsldir / "bin").mkdir(parents=True)
    log = tmp_path / "fast_call.txt"
    script = fsldir / "bin" / "fast"
    script.write_text(
        FAKE_FAST.format(
            python=sys.executable, expected=expected, absent=absent, channels=channels, log=str(log), fail=fail,
            write=write,
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.delenv("FSLDEVDIR", raising=False)
    monkeypatch.setenv("FSLDIR", str(fsldir))
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI")  # must be overridden for the child process
    return log


FAST_FLAGS = {"-n": "3", "-H": "0.1", "-I": "4", "-l": "20"}


def test_fast_multichannel_with_a_fake_fsldir(phantom, tmp_path: Path, monkeypatch) -> None:
    log = make_fake_fast(tmp_path, monkeypatch, expected={**FAST_FLAGS, "-S": "2"}, absent=("-t",), channels=2)
    t1 = as_volume(phantom, Contrast.T1)
    result = segment_tissues([t1, as_volume(phantom, Contrast.FLAIR)], brain_of(phantom), method="auto")
    assert log.read_text().splitlines()[1:] == [], log.read_text()
    assert result.method == "fsl-fast" and os.environ["FSLOUTPUTTYPE"] == "NIFTI"
    brain = phantom.brain_mask
    pve = np.stack([result.pve[name].data for name in CLASS_NAMES])
    np.testing.assert_allclose(pve.sum(0)[brain], 1.0, atol=1e-6)  # the hole was filled from a neighbour
    assert not pve[:, ~brain].any()
    # The fake wrote bright, dark, mid (on T1): they come back as WM, CSF, GM.
    data = t1.data
    low, high = np.percentile(data[brain], [25, 60])
    parts = {"CSF": data < low, "GM": (data >= low) & (data < high), "WM": data >= high}
    for name, part in parts.items():
        assert dice(result.pve[name].data > 0.5, brain & part) > 0.99, name
    labels = result.labels.data
    tissue = brain & (labels != 4)
    np.testing.assert_array_equal(labels[tissue], pve.argmax(0)[tissue] + 1)
    assert result.abnormal is not None and result.details["abnormal"]["components"] >= 1
    assert result.details["parameters"]["fast"] == {"n": 3, "H": 0.1, "I": 4, "l": 20}


def test_fast_single_channel_gives_the_type(phantom, tmp_path: Path, monkeypatch) -> None:
    log = make_fake_fast(tmp_path, monkeypatch, expected={**FAST_FLAGS, "-t": "2"}, absent=("-S",), channels=1)
    t2 = as_volume(phantom, Contrast.T2)
    result = segment_tissues([t2], brain_of(phantom), method="fsl")
    assert log.read_text().splitlines()[1:] == [], log.read_text()
    # On T2 the brightest class is CSF, the darkest WM.
    brain = phantom.brain_mask
    low, high = np.percentile(t2.data[brain], [25, 60])
    assert dice(result.labels.data == 1, brain & (t2.data >= high)) > 0.99
    assert dice(result.labels.data == 3, brain & (t2.data < low)) > 0.99
    assert result.abnormal is None


def test_fast_failures_are_runtime_failures(phantom, tmp_path: Path, monkeypatch) -> None:
    volumes = [as_volume(phantom, Contrast.T1)]
    make_fake_fast(tmp_path / "a", monkeypatch, expected={**FAST_FLAGS, "-t": "1"}, absent=(), channels=1, fail=True)
    with pytest.raises(RuntimeFailure, match=r"FAST failed on T1\.nii\.gz \(exit code 1: .*asked to fail") as info:
        segment_tissues(volumes, brain_of(phantom), method="fsl", abnormal=False)
    assert "\n" not in info.value.one_line() and "--segmentation embedded" in info.value.hint
    make_fake_fast(tmp_path / "b", monkeypatch, expected={**FAST_FLAGS, "-t": "1"}, absent=(), channels=1, write=False)
    with pytest.raises(RuntimeFailure, match="did not write a readable fast_pve_0"):
        segment_tissues(volumes, brain_of(phantom), method="fsl", abnormal=False)
