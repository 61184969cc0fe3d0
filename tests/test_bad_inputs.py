"""A sweep of malformed and hostile inputs through ``mrsynth synthesize`` (the shipped model routes them).

Every case must end with exit code 2, exactly one line on the terminal that names the file and a
fix, no traceback, and no output file (nor temporary file) left behind.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from tests.conftest import write_nifti
from tests.engine_fixtures import AFFINE, head

IMAGES = head(1)


def _valid(path: Path, contrast: str = "T1") -> Path:
    return write_nifti(path, IMAGES[contrast], AFFINE)


def _raw_header_edit(path: Path, offset: int, value: bytes) -> Path:
    """Write a valid uncompressed .nii, then overwrite bytes of its header in place."""
    nib.save(nib.Nifti1Image(IMAGES["T1"], AFFINE), str(path))
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(value)] = value
    path.write_bytes(bytes(raw))
    return path


def _case_files(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra CLI args replacing the T1 input, text the error must contain)."""
    t1 = lambda name: tmp / name  # noqa: E731
    cases: dict[str, tuple[Path | str, str]] = {}
    cases["missing file"] = (t1("nothere_T1.nii.gz"), "does not exist")
    t1("text_T1.nii.gz").write_text("not an image")
    cases["text named .nii.gz"] = (t1("text_T1.nii.gz"), "text_T1.nii.gz")
    good = _valid(t1("good_T1.nii.gz")).read_bytes()
    t1("truncated_T1.nii.gz").write_bytes(good[: len(good) // 3])
    cases["truncated gzip"] = (t1("truncated_T1.nii.gz"), "truncated_T1.nii.gz")
    t1("badmagic_T1.nii.gz").write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 340 + b"xyz\x00" + b"\x00" * 400))
    cases["wrong magic"] = (t1("badmagic_T1.nii.gz"), "badmagic_T1.nii.gz")
    write_nifti(t1("fourd_T1.nii.gz"), np.stack([IMAGES["T1"]] * 3, axis=-1), AFFINE)
    cases["4D"] = (t1("fourd_T1.nii.gz"), "4D")
    write_nifti(t1("twod_T1.nii.gz"), IMAGES["T1"][:, :, 10], AFFINE)
    cases["2D"] = (t1("twod_T1.nii.gz"), "twod_T1.nii.gz")
    nan = IMAGES["T1"].copy()
    nan[5, 5, 5] = np.nan
    write_nifti(t1("nan_T1.nii.gz"), nan, AFFINE)
    cases["NaN"] = (t1("nan_T1.nii.gz"), "nan_T1.nii.gz")
    inf = IMAGES["T1"].copy()
    inf[3, 4, 5] = np.inf
    write_nifti(t1("inf_T1.nii.gz"), inf, AFFINE)
    cases["Inf"] = (t1("inf_T1.nii.gz"), "inf_T1.nii.gz")
    write_nifti(t1("zeros_T1.nii.gz"), np.zeros_like(IMAGES["T1"]), AFFINE)
    cases["all zero"] = (t1("zeros_T1.nii.gz"), "zeros_T1.nii.gz")
    # dim[1] = 30000 in an uncompressed header: far more voxels than the file holds.
    cases["huge dimensions in header"] = (_raw_header_edit(t1("huge_T1.nii"), 42, np.int16(30000).tobytes()), "huge_T1.nii")
    cases["zero voxel size"] = (_raw_header_edit(t1("zerovox_T1.nii"), 80, np.float32(0.0).tobytes()), "zerovox_T1.nii")

    sheared = AFFINE.copy()
    sheared[0, 1] = 1.5  # columns no longer orthogonal
    write_nifti(t1("shear_T1.nii.gz"), IMAGES["T1"], sheared, qform_code=0)
    assert not np.allclose(nib.load(str(t1("shear_T1.nii.gz"))).affine, AFFINE)
    cases["non-orthonormal affine"] = (t1("shear_T1.nii.gz"), "sheared")
    write_nifti(t1("complex_T1.nii"), IMAGES["T1"].astype(np.complex64), AFFINE, dtype=np.complex64)
    cases["complex data"] = (t1("complex_T1.nii"), "complex_T1.nii")
    os.symlink(t1("loop_b_T1.nii.gz"), t1("loop_a_T1.nii.gz"))
    os.symlink(t1("loop_a_T1.nii.gz"), t1("loop_b_T1.nii.gz"))
    cases["symlink loop"] = (t1("loop_a_T1.nii.gz"), "loop_a_T1.nii.gz")
    t1("folder_T1.nii.gz").mkdir()
    cases["folder instead of file"] = (t1("folder_T1.nii.gz"), "folder_T1.nii.gz")
    cases["empty file"] = (t1("empty_T1.nii.gz"), "empty_T1.nii.gz")
    t1("empty_T1.nii.gz").write_bytes(b"")
    return {name: ([f"t1={path}"], expected) for name, (path, expected) in cases.items()}


def _invoke(args: list[str], home: Path):
    return CliRunner().invoke(
        app, expand_multi_value_options(args), env={"MRSYNTH_DEBUG": "0", "MRSYNTH_HOME": str(home)}
    )


def _assert_clean_failure(result, out_dir: Path, expected: str) -> None:
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert expected.lower() in text.lower(), text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    assert " -> " in text  # every message carries a fix
    assert not [p for p in out_dir.rglob("*") if p.is_file()]  # nothing written, no temporary files


CASE_NAMES = [
    "missing file", "text named .nii.gz", "truncated gzip", "wrong magic", "4D", "2D", "NaN", "Inf", "all zero",
    "huge dimensions in header", "zero voxel size", "non-orthonormal affine", "complex data", "symlink loop",
    "folder instead of file", "empty file",
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("bad")
    _valid(tmp / "ok_T2.nii.gz", "T2")
    return tmp, _case_files(tmp)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_file(cases, name: str, tmp_path: Path) -> None:
    tmp, table = cases
    args, expected = table[name]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _invoke(["synthesize", "--in", *args, f"t2={tmp / 'ok_T2.nii.gz'}", "--target", "flair", "--out",
                      str(out_dir / "flair.nii.gz")], tmp_path / "home")
    _assert_clean_failure(result, out_dir, expected)


def test_more_bad_requests(tmp_path: Path) -> None:
    t1 = _valid(tmp_path / "T1.nii.gz")
    t2 = _valid(tmp_path / "T2.nii.gz", "T2")
    moved = write_nifti(tmp_path / "moved_T2.nii.gz", IMAGES["T2"], AFFINE @ np.diag([1.0, 1.0, 1.5, 1.0]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = str(out_dir / "flair.nii.gz")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (out_dir / "exists.nii.gz").write_bytes(b"keep me")
    requests = {
        "unknown contrast": (["--in", f"dwi={t1}", "--target", "flair", "--out", out], "dwi"),
        "contrast given twice": (["--in", f"t1={t1}", f"t1={t2}", "--target", "flair", "--out", out], "two inputs"),
        "unknown target": (["--in", f"t1={t1}", "--target", "xray", "--out", out], "xray"),
        "mismatched grids without registration": (
            ["--in", f"t1={t1}", f"t2={moved}", "--target", "flair", "--out", out, "--registration", "none"],
            "moved_T2.nii.gz"),
        "output not NIfTI": (["--in", f"t1={t1}", "--target", "flair", "--out", str(out_dir / "f.png")], "f.png"),
        "output under a file": (["--in", f"t1={t1}", "--target", "flair", "--out", str(a_file / "f.nii.gz")], "a_file"),
        "existing output": (["--in", f"t1={t1}", "--target", "flair", "--out", str(out_dir / "exists.nii.gz")],
                            "--force"),
        "wrong model for the inputs": (["--in", f"t1={t1}", "--target", "flair", "--out", out, "--model", "unet-t1"],
                                       "unet-t1"),
        "unknown model": (["--in", f"t1={t1}", "--target", "flair", "--out", out, "--model", "nope"], "nope"),
        "missing device": (["--in", f"t1={t1}", "--target", "flair", "--out", out, "--device", "cuda:7"], "cuda"),
    }
    for name, (args, expected) in requests.items():
        result = _invoke(["synthesize", *args], tmp_path / "home")
        text = result.output.strip()
        assert result.exit_code == 2, (name, text)
        assert expected.lower() in text.lower(), (name, text)
        assert "Traceback" not in text and len(text.splitlines()) == 1, (name, text)
        left = sorted(p.name for p in out_dir.rglob("*") if p.is_file())
        assert left == ["exists.nii.gz"], (name, left)
        assert (out_dir / "exists.nii.gz").read_bytes() == b"keep me"


def test_path_with_spaces_and_unicode_is_fine(tmp_path: Path) -> None:
    """Not an error at all: a hostile-looking but valid path must just work (inspect reads it)."""
    folder = tmp_path / "Müller Jürgen – 2024 (copy)"
    folder.mkdir()
    t1 = _valid(folder / "T1 ünïcode.nii.gz")
    result = _invoke(["inspect", f"t1={t1}"], tmp_path / "home")
    assert result.exit_code == 0, result.output
