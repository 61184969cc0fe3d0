"""The command-line shell: version, info, the error boundary and bad inputs, through CliRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mrsynth_cli import __version__
from mrsynth_cli.cli.app import app
from tests.conftest import AFFINES, blob, write_nifti

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={"MRSYNTH_DEBUG": "0", **(env or {})})


def assert_one_line_error(result, *fragments: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("mrsynth: error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"mrsynth {__version__}"


def test_help_does_not_import_torch() -> None:
    code = "import sys; from mrsynth_cli.cli.app import app; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_info_reports_fake_fsl(tmp_path: Path) -> None:
    fsl = tmp_path / "fsl"
    (fsl / "bin").mkdir(parents=True)
    flirt = fsl / "bin" / "flirt"
    flirt.write_text("#!/bin/sh\nexit 0\n")
    flirt.chmod(0o755)
    result = invoke("info", "--json", env={"FSLDIR": str(fsl), "FSLDEVDIR": "", "MRSYNTH_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fsl"]["dir"] == str(fsl)
    assert data["fsl"]["tools"] == {"flirt": str(flirt), "fast": None, "bet": None}
    assert data["weights_dir"] == str(tmp_path / "home" / "weights")
    assert "cpu" in data["devices"] and data["mrsynth"] == __version__


def test_info_without_fsl(tmp_path: Path) -> None:
    result = invoke("info", env={"FSLDIR": "", "FSLDEVDIR": ""})
    assert result.exit_code == 0 and "FSL: not found" in result.output


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    four_d = write_nifti(tmp_path / "T1_4d.nii.gz", np.stack([blob()] * 3, -1), AFFINES["ras"])
    nan = write_nifti(tmp_path / "T1_nan.nii.gz", np.where(blob() > 0, np.nan, 1.0), AFFINES["ras"])
    empty = write_nifti(tmp_path / "T1_empty.nii.gz", np.zeros((6, 6, 6)), AFFINES["ras"])
    text = tmp_path / "T1.txt"
    text.write_text("x")
    fake = tmp_path / "T1_fake.nii.gz"
    fake.write_bytes(b"\x1f\x8b garbage")
    return {
        "missing": (tmp_path / "T1_missing.nii.gz", "does not exist"),
        "not nifti": (text, "not a NIfTI file"),
        "corrupt": (fake, "not a readable NIfTI"),
        "4d": (four_d, "4D with 3 frames"),
        "nan": (nan, "NaN or infinite"),
        "empty": (empty, "is empty"),
    }


@pytest.mark.parametrize("case", ["missing", "not nifti", "corrupt", "4d", "nan", "empty"])
def test_bad_input_files(tmp_path: Path, case: str) -> None:
    path, message = _bad_files(tmp_path)[case]
    assert_one_line_error(invoke("inspect", str(path)), message, str(path))


def test_unknown_and_ambiguous_contrasts(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "scan.nii.gz", blob(), AFFINES["ras"])
    assert_one_line_error(invoke("inspect", f"dwi={path}"), "unknown contrast 'dwi'")
    assert_one_line_error(invoke("inspect", str(path)), "cannot tell the contrast", "--in t1=")
    both = write_nifti(tmp_path / "t1_t2.nii.gz", blob(), AFFINES["ras"])
    assert_one_line_error(invoke("inspect", str(both)), "more than one contrast")


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "T1_missing.nii.gz")], env={"MRSYNTH_DEBUG": "1"})
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "InputError"


def test_console_script_exit_code_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "MRSYNTH_DEBUG": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "mrsynth_cli", "inspect", str(tmp_path / "T1.nii.gz")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr



def test_inspect_subject_folder(tiny_pair) -> None:
    result = invoke("inspect", str(tiny_pair[0].parent))
    assert result.exit_code == 0, result.output
    assert "T1 " in result.output and "T2 " in result.output and "(12, 14, 10)" in result.output


def test_evaluate_refuses_mismatched_grids(tmp_path: Path) -> None:
    a = write_nifti(tmp_path / "a_T2.nii.gz", blob(), AFFINES["ras"])
    b = write_nifti(tmp_path / "b_T2.nii.gz", blob(), AFFINES["lps"])
    assert_one_line_error(invoke("evaluate", "--pred", str(a), "--ref", str(b)), "different grids", "a_T2", "b_T2")


def test_evaluate_keeps_existing_output(tiny_pair, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    out.write_text("keep me")
    result = invoke("evaluate", "--pred", str(tiny_pair[1]), "--ref", str(tiny_pair[0]), "--out", str(out))
    assert_one_line_error(result, "already exists", "--force")
    assert out.read_text() == "keep me"


def test_evaluate_json_csv_and_out(tiny_pair, tmp_path: Path) -> None:
    t1, t2 = tiny_pair
    result = invoke("evaluate", "--pred", str(t2), "--ref", str(t1), "--json", "--out", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == json.loads((tmp_path / "r.json").read_text())
    assert {"psnr", "ssim3d", "ssim2d_axial", "nmse", "mae", "fsim", "gmsd"} <= set(data["metrics"])
    same = invoke("evaluate", "--pred", str(t1), "--ref", str(t1), "--csv")
    header, row = same.output.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(values["ssim3d"]) == pytest.approx(1.0) and float(values["mae"]) == 0.0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["synthesize", "--in", "a", "b", "--target", "flair"], ["synthesize", "--in", "a", "--in", "b", "--target", "flair"]),
        (["x", "--in", "a", "--in", "b"], ["x", "--in", "a", "--in", "b"]),
        (["x", "--target", "t2", "flair", "t1ce", "--out-dir", "d"], ["x", "--target", "t2", "--target", "flair", "--target", "t1ce", "--out-dir", "d"]),
        (["x", "--in", "a", "--", "--in"], ["x", "--in", "a", "--", "--in"]),
        (["phantom", "out", "--seed", "3"], ["phantom", "out", "--seed", "3"]),
    ],
)
def test_expand_multi_value_options(argv: list[str], expected: list[str]) -> None:
    from mrsynth_cli.cli.app import expand_multi_value_options

    assert expand_multi_value_options(argv) == expected


def test_preprocess_writes_outputs_on_the_reference_grid(tiny_pair, tmp_path: Path) -> None:
    import nibabel as nib

    t1, t2 = tiny_pair
    out = tmp_path / "pre"
    result = runner.invoke(
        app,
        ["preprocess", "--in", f"t1={t1}", "--in", f"t2={t2}", "--out-dir", str(out), "--registration", "none",
         "--segmentation", "none"],
        env={"MRSYNTH_DEBUG": "0"},
    )
    assert result.exit_code == 0, result.output
    assert "registration: none" in result.output and "brain_mask: already-stripped" in result.output
    for name in ("T1_space-ref.nii.gz", "T2_space-ref.nii.gz", "brain_mask.nii.gz"):
        image = nib.load(str(out / name))
        np.testing.assert_array_equal(image.affine, nib.load(str(t1)).affine)
    record = json.loads((out / "preprocess_record.json").read_text())
    assert record["reference"] == str(t1) and record["backends"]["registration"] == "none"
    again = runner.invoke(
        app, ["preprocess", "--in", f"t1={t1}", "--out-dir", str(out), "--registration", "none"], env={"MRSYNTH_DEBUG": "0"}
    )
    assert_one_line_error(again, "not empty", "--force")


def test_preprocess_writes_tissue_masks(tmp_path: Path) -> None:
    import nibabel as nib

    from mrsynth_cli.io.contrasts import Contrast
    from mrsynth_cli.phantom import simulate_subject, subject_rng

    subject = simulate_subject(subject_rng(5, 0), resolution_mm=4.0, lesions="tumour", skull=False)
    files = {}
    for contrast in (Contrast.T1, Contrast.FLAIR):  # skull-stripped: zero outside the brain
        data = np.where(subject.brain_mask, subject.images[contrast], 0.0)
        files[contrast] = write_nifti(tmp_path / f"{contrast.value}.nii.gz", data, subject.affine)
    out = tmp_path / "pre"
    result = invoke(
        "preprocess", "--in", f"t1={files[Contrast.T1]}", "--in", f"flair={files[Contrast.FLAIR]}",
        "--out-dir", str(out), "--registration", "none", env={"FSLDIR": "", "FSLDEVDIR": ""},
    )
    assert result.exit_code == 0, result.output
    assert "tissues: embedded-hmrf" in result.output  # the default is auto: no FSL, so embedded
    pve = np.stack([np.asarray(nib.load(str(out / f"tissue_{n}_pve.nii.gz")).dataobj) for n in ("CSF", "GM", "WM")])
    brain = np.asarray(nib.load(str(out / "brain_mask.nii.gz")).dataobj) > 0
    np.testing.assert_allclose(pve.sum(0)[brain], 1.0, atol=1e-5)
    labels = np.asarray(nib.load(str(out / "tissue_labels.nii.gz")).dataobj)
    assert set(np.unique(labels[brain])) <= {1, 2, 3, 4} and not labels[~brain].any()
    abnormal = np.asarray(nib.load(str(out / "tissue_abnormal.nii.gz")).dataobj)
    np.testing.assert_array_equal(abnormal, labels == 4)
    assert json.loads((out / "tissues.json").read_text())["method"] == "embedded-hmrf"


def test_preprocess_segmentation_fsl_without_fsl(tiny_pair, tmp_path: Path) -> None:
    t1, _ = tiny_pair
    result = invoke(
        "preprocess", "--in", f"t1={t1}", "--out-dir", str(tmp_path / "pre"), "--registration", "none",
        "--segmentation", "fsl", env={"FSLDIR": "", "FSLDEVDIR": ""},
    )
    assert_one_line_error(result, "FSL FAST was requested", "--segmentation embedded")
