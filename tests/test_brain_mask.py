"""Brain masks: skull-stripped detection, the embedded template method on a skull phantom, FSL BET via a mock FSLDIR.

The phantom is simulated at 3 mm (a few seconds) with a seed the template does not use (the template
has no random draws at all: identity transform, mean layers).
"""

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
from mrsynth_cli.phantom import simulate_subject
from mrsynth_cli.preprocessing import brain_mask as bm
from mrsynth_cli.preprocessing.brain_mask import brain_mask

PHANTOM_MM = 3.0


@pytest.fixture(autouse=True)
def no_fsl(monkeypatch) -> None:
    """Every test starts without FSL, whatever the machine has."""
    monkeypatch.delenv("FSLDIR", raising=False)
    monkeypatch.delenv("FSLDEVDIR", raising=False)


@pytest.fixture(scope="module")
def phantom():
    return simulate_subject(np.random.default_rng(2024), resolution_mm=PHANTOM_MM, lesions="none", skull=True)


def as_volume(phantom, contrast: Contrast, data: np.ndarray | None = None) -> Volume:
    image = phantom.images[contrast] if data is None else data
    return Volume(image, phantom.affine.copy(), nib.Nifti1Header(), Path(f"sub-01_{contrast}.nii.gz"), contrast)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def embedded_t1(phantom) -> bm.BrainMaskResult:
    return brain_mask([as_volume(phantom, Contrast.T1)], method="embedded")


# --------------------------------------------------------------------------------------------------
# The embedded method


def test_embedded_extracts_the_brain_of_a_skull_phantom(phantom, embedded_t1) -> None:
    mask = embedded_t1.mask.data > 0.5
    assert embedded_t1.method == "embedded"
    assert embedded_t1.mask.shape == phantom.shape
    assert dice(mask, phantom.brain_mask) >= 0.95  # 0.989 when written
    # The whole head scores far lower, so the threshold above tells a brain from a head.
    head = phantom.images[Contrast.T1] > 0.2 * np.percentile(phantom.images[Contrast.T1], 99)
    assert dice(head, phantom.brain_mask) < 0.8
    details = embedded_t1.details
    assert details["affine"]["chosen"] in details["affine"]["scores"]
    assert set(details["timings_s"]) == {"template", "affine", "refine"}
    assert details["settings"]["band_mm"] == bm.EmbeddedSettings().band_mm
    truth_ml = float(np.count_nonzero(phantom.brain_mask)) * PHANTOM_MM**3 / 1000.0
    assert abs(details["brain_ml"] - truth_ml) < 0.05 * truth_ml


def test_embedded_is_deterministic_and_auto_uses_it_without_fsl(phantom, embedded_t1) -> None:
    again = brain_mask([as_volume(phantom, Contrast.T1)], method="auto")
    assert again.method == "embedded"
    assert np.array_equal(again.mask.data, embedded_t1.mask.data)
    key = "transform_input_to_template"
    assert again.details["affine"][key] == embedded_t1.details["affine"][key]


def test_embedded_on_flair_uses_the_flair_template(phantom) -> None:
    result = brain_mask([as_volume(phantom, Contrast.FLAIR), as_volume(phantom, Contrast.T1)], method="embedded")
    assert "FLAIR" in result.details["template"]
    assert dice(result.mask.data > 0.5, phantom.brain_mask) >= 0.95  # 0.988 when written


def test_unknown_contrast_uses_the_t1_template() -> None:
    assert bm.head_template(None).contrast is Contrast.T1
    assert bm.head_template(Contrast.TOF).contrast is Contrast.T1
    template = bm.head_template(Contrast.T2)
    assert template.contrast is Contrast.T2
    brain_ml = float(np.count_nonzero(template.brain.data >= 0.5)) * 8.0 / 1000.0  # 2 mm voxels
    assert 1300 < brain_ml < 2000  # the ICBM152 brain with its CSF


def test_registration_failure_is_a_one_line_input_error(phantom, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeFailure("SimpleITK registration failed (all samples map outside)\nmore detail", "try again")

    monkeypatch.setattr(bm, "register", fail)
    with pytest.raises(InputError, match=r"brain extraction of sub-01_T1\.nii\.gz failed") as info:
        brain_mask([as_volume(phantom, Contrast.T1)], method="embedded")
    assert "\n" not in info.value.one_line()
    assert "HD-BET" in info.value.hint


# --------------------------------------------------------------------------------------------------
# Skull-stripped inputs and implausible masks


def test_skull_stripped_input_is_detected(phantom) -> None:
    stripped = np.where(phantom.brain_mask, phantom.images[Contrast.T2], 0.0).astype(np.float32)
    result = brain_mask([as_volume(phantom, Contrast.T2, stripped)], method="embedded")
    assert result.method == "already-stripped"
    assert np.array_equal(result.mask.data > 0.5, stripped > 0)


def test_a_whole_head_on_a_zero_background_is_not_taken_as_stripped(phantom) -> None:
    image = phantom.images[Contrast.T1]
    head = np.where(image > 0.2 * np.percentile(image, 99), image, 0.0).astype(np.float32)
    assert bm._already_stripped(as_volume(phantom, Contrast.T1, head)) is None


def test_implausible_and_empty_masks_are_input_errors(phantom) -> None:
    tiny = np.zeros(phantom.shape, dtype=np.float32)
    tiny[30:34, 30:34, 30:34] = 100.0  # 1.7 ml
    with pytest.raises(InputError, match=r"implausible brain of 2 ml \(expected 300-2500 ml\)") as info:
        bm._result(as_volume(phantom, Contrast.T1), tiny > 0, "embedded", {}, 0.0)
    assert "sub-01_T1.nii.gz" in info.value.message and "HD-BET" in info.value.hint
    # An input the user stripped themselves is theirs to judge: a small brain is kept, holes filled.
    stripped = tiny.copy()
    stripped[31, 31, 31] = 0.0
    result = brain_mask([as_volume(phantom, Contrast.T1, stripped)])
    assert result.method == "already-stripped" and result.mask.data.sum() == 64
    with pytest.raises(InputError, match="empty mask"):
        bm._refine(as_volume(phantom, Contrast.T1), np.zeros(phantom.shape, np.float32), bm.EmbeddedSettings())


def test_unknown_method_is_an_input_error(phantom) -> None:
    with pytest.raises(InputError, match="unknown brain mask method 'hdbet'"):
        brain_mask([as_volume(phantom, Contrast.T1)], method="hdbet")


# --------------------------------------------------------------------------------------------------
# FSL BET through a mock FSLDIR (the command line is checked by the fake tool itself)

FAKE_BET = """\
#!{python}
import os, sys
import nibabel as nib
import numpy as np

args = sys.argv[1:]
problems = []
if len(args) < 2 or not os.path.isfile(args[0]):
    problems.append("the input is not an existing file")
for flag in ("-m", "-R"):
    if flag not in args[2:]:
        problems.append(f"missing {{flag}}")
if os.environ.get("FSLOUTPUTTYPE") != "NIFTI_GZ":
    problems.append("FSLOUTPUTTYPE is " + str(os.environ.get("FSLOUTPUTTYPE")))
with open({log!r}, "w") as handle:
    handle.write(" ".join(args) + "\\n" + "\\n".join(problems))
if problems or {mode!r} == "fail":
    sys.stderr.write("Error: fake bet refused: " + "; ".join(problems or ["asked to fail"]) + "\\n")
    sys.exit(1)
image = nib.load(args[0])
data = np.asarray(image.dataobj)
mask = np.zeros(data.shape, dtype=np.uint8)
if {mode!r} == "brain":
    centre = np.array(data.shape) // 2
    mask[tuple(slice(c - 12, c + 12) for c in centre)] = 1  # 24^3 voxels of 3 mm: 373 ml
out = args[1]
nib.save(nib.Nifti1Image(data * mask, image.affine), out + ".nii.gz")
nib.save(nib.Nifti1Image(mask, image.affine), out + "_mask.nii.gz")
"""


def make_fake_bet(tmp_path: Path, monkeypatch, mode: str = "brain") -> Path:
    fsldir = tmp_path / f"fsl-{mode}"
    (fsldir / "bin").mkdir(parents=True)
    log = tmp_path / f"bet_call_{mode}.txt"
    script = fsldir / "bin" / "bet"
    script.write_text(FAKE_BET.format(python=sys.executable, log=str(log), mode=mode))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("FSLDIR", str(fsldir))
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI")  # must be overridden for the child process
    return log


def test_fsl_bet_with_a_mock_fsldir(phantom, tmp_path: Path, monkeypatch) -> None:
    log = make_fake_bet(tmp_path, monkeypatch)
    volume = as_volume(phantom, Contrast.T1)
    for method in ("fsl", "auto"):
        result = brain_mask([volume], method=method)
        call = log.read_text()
        assert call.splitlines()[1:] == [], call  # the fake tool found nothing wrong
        assert result.method == "fsl-bet"
        expected = np.zeros(phantom.shape, dtype=bool)
        expected[tuple(slice(c - 12, c + 12) for c in np.array(phantom.shape) // 2)] = True
        assert np.array_equal(result.mask.data > 0.5, expected)
        assert np.array_equal(result.mask.affine, volume.affine)
        assert result.details["command"].startswith("bet ") and result.details["command"].endswith(" -m -R")
        assert result.details["bet"] == str(tmp_path / "fsl-brain" / "bin" / "bet")
    assert os.environ["FSLOUTPUTTYPE"] == "NIFTI"  # restored for this process


def test_fsl_bet_failures_are_input_errors(phantom, tmp_path: Path, monkeypatch) -> None:
    volume = as_volume(phantom, Contrast.T1)
    make_fake_bet(tmp_path, monkeypatch, mode="fail")
    with pytest.raises(InputError, match=r"FSL BET failed on sub-01_T1\.nii\.gz \(exit code 1: .*asked to fail\)"):
        brain_mask([volume], method="fsl")
    make_fake_bet(tmp_path, monkeypatch, mode="empty")
    with pytest.raises(InputError, match=r"brain extraction \(fsl-bet\) of sub-01_T1\.nii\.gz gave an empty mask"):
        brain_mask([volume], method="fsl")
    monkeypatch.delenv("FSLDIR")
    with pytest.raises(InputError, match=r"FSL BET was requested for sub-01_T1\.nii\.gz") as info:
        brain_mask([volume], method="fsl")
    assert "--brain-mask embedded" in info.value.hint
