"""``--transform CONTRAST=FILE``: a transform the user already has replaces registration."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.preprocessing.registration import rigid_matrix, save_transform, world_to_flirt
from tests.conftest import write_nifti
from tests.engine_fixtures import AFFINE, head


def invoke(*args: str):
    return CliRunner().invoke(app, expand_multi_value_options(list(args)), env={"MRSYNTH_DEBUG": "0"})


@pytest.fixture
def moved_pair(tmp_path: Path):
    """T1 on the reference grid; T2 of the same head whose header was moved by a known rigid transform."""
    images = head(5)
    t1 = write_nifti(tmp_path / "T1.nii.gz", images["T1"], AFFINE)
    # Points x of the reference map to moving points M x: the T2 header is moved by M.
    moved = rigid_matrix((8.0, -6.0, 10.0), (6.0, -4.0, 3.0))
    t2 = write_nifti(tmp_path / "T2.nii.gz", images["T2"], moved @ AFFINE)
    return t1, t2, moved, images


def _check_recovered(out_dir: Path, images: dict) -> None:
    recovered = np.asarray(nib.load(str(out_dir / "T2_space-ref.nii.gz")).dataobj)
    inside = images["T2"] > 0
    assert np.corrcoef(recovered[inside], images["T2"][inside])[0, 1] > 0.9


def test_itk_transform_replaces_registration(moved_pair, tmp_path: Path) -> None:
    t1, t2, moved, images = moved_pair
    tfm = save_transform(moved, tmp_path / "t2_to_t1.tfm")
    out_dir = tmp_path / "out"
    result = invoke("preprocess", "--in", f"t1={t1}", f"t2={t2}", "--transform", f"t2={tfm}", "--out-dir", str(out_dir))
    assert result.exit_code == 0, result.output
    assert "registration: given" in result.output
    _check_recovered(out_dir, images)


def test_fsl_matrix_replaces_registration(moved_pair, tmp_path: Path) -> None:
    from mrsynth_cli.io.volume import load_volume
    from mrsynth_cli.preprocessing.registration import Grid

    t1, t2, moved, images = moved_pair
    flirt = world_to_flirt(moved, Grid.of(load_volume(t2)), Grid.of(load_volume(t1)))
    mat = tmp_path / "t2_to_t1.mat"
    np.savetxt(mat, flirt)
    out_dir = tmp_path / "out"
    result = invoke("preprocess", "--in", f"t1={t1}", f"t2={t2}", "--transform", f"t2={mat}", "--out-dir", str(out_dir))
    assert result.exit_code == 0, result.output
    _check_recovered(out_dir, images)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("this is not a transform\n", "not a readable ITK transform"),
        (None, "do not overlap"),
    ],
)
def test_bad_transforms_are_one_line_errors(moved_pair, tmp_path: Path, content, expected) -> None:
    t1, t2, _, _ = moved_pair
    if content is None:
        path = save_transform(rigid_matrix((0, 0, 0), (900.0, 0, 0)), tmp_path / "far.tfm")
    else:
        path = tmp_path / "broken.tfm"
        path.write_text(content)
    out_dir = tmp_path / "out"
    result = invoke("preprocess", "--in", f"t1={t1}", f"t2={t2}", "--transform", f"t2={path}", "--out-dir", str(out_dir))
    assert result.exit_code == 2
    assert expected in result.output
    assert path.name in result.output or "T2" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_transform_for_the_reference_or_a_missing_input_is_refused(moved_pair, tmp_path: Path) -> None:
    t1, t2, moved, _ = moved_pair
    tfm = save_transform(moved, tmp_path / "m.tfm")
    for spec in (f"t1={tfm}", f"flair={tfm}", "t2"):
        result = invoke("preprocess", "--in", f"t1={t1}", f"t2={t2}", "--transform", spec, "--out-dir",
                        str(tmp_path / "out"))
        assert result.exit_code == 2, spec
        assert "--transform" in result.output
