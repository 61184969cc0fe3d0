"""Volume loading, validation and geometry-preserving atomic writing."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrsynth_cli.errors import GeometryError, InputError, OutputExistsError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.volume import (
    SYNTHETIC_DESCRIP_PREFIX,
    check_same_grid,
    load_volume,
    save_volume,
    synthetic_descrip,
)
from tests.conftest import AFFINES, blob, write_nifti


def _zero_voxel_size(path: Path) -> Path:
    """An uncompressed NIfTI whose sform (code 2) has a zero first column: a 0 mm voxel edge."""
    path = path.with_name("bad.nii")
    write_nifti(path, blob(), AFFINES["ras"], qform_code=0, sform_code=2)
    raw = bytearray(path.read_bytes())
    raw[280:296] = np.zeros(4, dtype="<f4").tobytes()  # srow_x
    path.write_bytes(bytes(raw))
    return path


def test_round_trip_keeps_geometry_exactly(tiny_volume: Path, tmp_path: Path) -> None:
    source = nib.load(str(tiny_volume))
    volume = load_volume(tiny_volume, Contrast.T1)
    out = save_volume(volume.data * 2, volume, tmp_path / "out.nii.gz", descrip=synthetic_descrip(Contrast.FLAIR, "x"))
    written = nib.load(str(out))
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
    np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    assert int(written.header["qform_code"]) == int(source.header["qform_code"])
    np.testing.assert_array_equal(written.header.get_zooms(), source.header.get_zooms())
    assert written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.get_fdata(), volume.data * 2, rtol=1e-6)
    assert written.header["descrip"].tobytes().decode().startswith(SYNTHETIC_DESCRIP_PREFIX)


def test_round_trip_keeps_distinct_qform_and_sform_codes(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "t2.nii", blob(), AFFINES["lps"], qform_code=1, sform_code=4)
    volume = load_volume(path)
    out = nib.load(str(save_volume(volume.data, volume, tmp_path / "copy.nii", dtype=np.int16)))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    assert out.get_data_dtype() == np.int16
    np.testing.assert_array_equal(out.affine, volume.affine)


def test_singleton_fourth_dimension_is_squeezed(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "t1.nii.gz", blob()[..., None], AFFINES["ras"])
    assert load_volume(path).shape == (12, 14, 10)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.with_suffix(".txt").write_text("hello"), p.with_suffix(".txt"))[1], "not a NIfTI file"),
        (lambda p: (p.write_bytes(b"not gzip at all"), p)[1], "not a readable NIfTI"),
        (lambda p: write_nifti(p, np.stack([blob(), blob()], -1), AFFINES["ras"]), "4D with 2 frames"),
        (lambda p: write_nifti(p, blob()[..., 0], AFFINES["ras"]), "not 3"),
        (lambda p: write_nifti(p, np.where(blob() > 0, np.nan, 0), AFFINES["ras"]), "NaN or infinite"),
        (lambda p: write_nifti(p, np.zeros((8, 8, 8)), AFFINES["ras"]), "is empty"),
        (lambda p: _zero_voxel_size(p), "implausible voxel sizes"),
        (lambda p: write_nifti(p, blob(), np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])), "sheared"),
    ],
)
def test_bad_inputs_are_refused_with_the_file_named(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "bad.nii.gz")
    with pytest.raises(InputError) as info:
        load_volume(path)
    text = info.value.one_line()
    assert message in text and str(path) in text and "\n" not in text and info.value.hint


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).random((40, 40, 40)), AFFINES["ras"])
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.nii.gz"):
        load_volume(bad)


def test_huge_header_dimensions_are_refused_before_reading(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "huge.nii", blob(), AFFINES["ras"])
    raw = bytearray(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])))
    header.set_data_shape((30000, 30000, 30000))
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="implausible size"):
        load_volume(path)


def test_qform_sform_disagreement_warns_and_uses_sform(tmp_path: Path) -> None:
    image = nib.Nifti1Image(blob(), AFFINES["ras"])
    image.set_qform(AFFINES["lps"], 1)
    image.set_sform(AFFINES["ras"], 2)
    nib.save(image, str(tmp_path / "x.nii.gz"))
    volume = load_volume(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(volume.affine, AFFINES["ras"])
    assert any("disagree" in w for w in volume.warnings)


def test_existing_output_is_kept_without_force(tmp_path: Path, tiny_pair) -> None:
    volume = load_volume(tiny_pair[0])
    target = tmp_path / "exists.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError) as info:
        save_volume(volume.data, volume, target)
    assert "--force" in info.value.one_line()
    assert target.read_bytes() == b"precious"
    save_volume(volume.data, volume, target, force=True)
    assert nib.load(str(target)).shape == volume.shape


def test_failed_write_leaves_nothing(tmp_path: Path, tiny_pair) -> None:
    volume = load_volume(tiny_pair[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(GeometryError):
        save_volume(volume.data[:-1], volume, out_dir / "wrong.nii.gz")
    assert list(out_dir.iterdir()) == []


def test_check_same_grid_lists_every_grid(tmp_path: Path) -> None:
    a = load_volume(write_nifti(tmp_path / "a.nii.gz", blob(), AFFINES["ras"]))
    b = load_volume(write_nifti(tmp_path / "b.nii.gz", blob(), AFFINES["lps"]))
    check_same_grid([a, a])
    with pytest.raises(GeometryError) as info:
        check_same_grid([a, b])
    assert "a.nii.gz" in str(info.value) and "b.nii.gz" in str(info.value) and "LPS" in str(info.value)


def test_gzip_is_really_gzip(tmp_path: Path, tiny_pair) -> None:
    volume = load_volume(tiny_pair[0])
    out = save_volume(volume.data, volume, tmp_path / "o.nii.gz")
    with gzip.open(out) as handle:
        assert len(handle.read(348)) == 348


def test_atomic_outputs_get_normal_permissions(tmp_path: Path, tiny_pair) -> None:
    import os
    import stat

    volume = load_volume(tiny_pair[0])
    out = save_volume(volume.data, volume, tmp_path / "perm.nii.gz")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
