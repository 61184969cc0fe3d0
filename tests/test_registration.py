"""Registration: RAS/LPS conversions, resampling, the embedded SimpleITK method, FSL matrices, FLIRT via a mock FSLDIR.

The synthetic "head" is an analytic image (nested smooth ellipsoids with asymmetric features) that is
evaluated directly at transformed world points, so that the moving image of a known transform is
exact (no resampling in the test data) and registration errors are measured against the truth.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mrsynth_cli.errors import GeometryError, InputError, RuntimeFailure
from mrsynth_cli.io.volume import Volume, load_volume
from mrsynth_cli.preprocessing import registration as reg
from mrsynth_cli.preprocessing.registration import (
    Grid,
    flirt_to_world,
    fsl_scaled_voxel_matrix,
    load_transform,
    register,
    resample_to_reference,
    rigid_matrix,
    world_to_flirt,
)
from mrsynth_cli.preprocessing.sitk_convert import (
    RAS_TO_LPS,
    affine_from_sitk,
    affine_to_sitk_geometry,
    matrix_to_sitk_transform,
    sitk_to_array_on,
    sitk_transform_to_matrix,
    volume_to_sitk,
)
from tests.conftest import AFFINES, write_nifti

# --------------------------------------------------------------------------------------------------
# A smooth synthetic head, evaluated in world RAS mm

#: (centre, radii, T1-like value, T2-like value), painted in order (later ones on top).
STRUCTURES = [
    ((0.0, 0.0, 0.0), (62.0, 74.0, 66.0), 0.6, 0.4),  # scalp
    ((0.0, 2.0, 3.0), (56.0, 68.0, 60.0), 0.1, 1.0),  # CSF / skull
    ((0.0, 2.0, 5.0), (50.0, 62.0, 53.0), 0.75, 0.55),  # grey matter
    ((0.0, 0.0, 8.0), (36.0, 46.0, 36.0), 1.0, 0.3),  # white matter
    ((9.0, 6.0, 10.0), (5.0, 18.0, 8.0), 0.2, 1.0),  # right ventricle
    ((-8.0, 2.0, 10.0), (6.0, 16.0, 7.0), 0.2, 1.0),  # left ventricle
    ((22.0, 58.0, -22.0), (11.0, 9.0, 9.0), 0.9, 0.2),  # an eye-like blob (anterior right)
    ((-26.0, -38.0, 28.0), (8.0, 8.0, 8.0), 0.35, 0.9),  # a lesion-like blob (posterior left)
    ((0.0, -20.0, -50.0), (14.0, 14.0, 20.0), 0.7, 0.5),  # brainstem-like column
]


def head(points: np.ndarray, contrast: int = 0) -> np.ndarray:
    """Intensities of the synthetic head at world points of shape (N, 3)."""
    value = np.zeros(len(points))
    for centre, radii, *values in STRUCTURES:
        r = np.sqrt((((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=1))
        inside = 0.5 * (1.0 + np.tanh((1.0 - r) / 0.08))  # a logistic step about 3 mm wide
        value = value * (1.0 - inside) + values[contrast] * inside
    return value


def world_points(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def head_volume(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    *,
    contrast: int = 0,
    fixed_to_moving: np.ndarray | None = None,
    noise: float = 0.01,
    seed: int = 0,
    path: Path | None = None,
) -> Volume:
    """The head on a grid; with ``fixed_to_moving`` T, the anatomy at fixed point x appears at T x."""
    points = world_points(affine, shape)
    if fixed_to_moving is not None:
        inverse = np.linalg.inv(fixed_to_moving)
        points = points @ inverse[:3, :3].T + inverse[:3, 3]
    data = 100.0 * head(points, contrast).reshape(shape)
    data += noise * 100.0 * np.random.default_rng(seed).standard_normal(shape)
    return Volume(np.clip(data, 0, None).astype(np.float32), np.asarray(affine, float), nib.Nifti1Header(), path)


def centred_affine(
    spacing: tuple[float, float, float], shape: tuple[int, int, int], rotation=np.eye(3), flip=(1, 1, 1)
) -> np.ndarray:
    linear = rotation @ np.diag(np.asarray(spacing) * np.asarray(flip))
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


FIXED_SHAPE = (48, 48, 48)
FIXED_AFFINE = centred_affine((4.0, 4.0, 4.0), FIXED_SHAPE, flip=(-1, -1, 1))  # LPS-stored, like DICOM exports
MOVING_SHAPE = (44, 48, 42)
MOVING_AFFINE = centred_affine((4.2, 4.0, 4.5), MOVING_SHAPE, rotation=rigid_matrix((4.0, -3.0, 6.0))[:3, :3])


def head_points(step: int = 2) -> np.ndarray:
    """Fixed-world points inside the head (where displacement errors are measured)."""
    points = world_points(FIXED_AFFINE, FIXED_SHAPE)[::step]
    return points[head(points) > 0.3]


def displacement(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points @ (a[:3, :3] - b[:3, :3]).T + (a[:3, 3] - b[:3, 3]), axis=1)


@pytest.fixture(scope="module")
def fixed_head() -> Volume:
    return head_volume(FIXED_AFFINE, FIXED_SHAPE, contrast=1, path=Path("fixed_T2.nii.gz"))


@pytest.fixture(scope="module")
def known_case(fixed_head: Volume) -> tuple[Volume, np.ndarray, reg.RegistrationResult]:
    """A T1-like moving image displaced by a known rigid transform, registered once for several tests."""
    truth = rigid_matrix((12.0, -9.0, 16.0), (11.0, -13.0, 9.0), center=(5.0, -3.0, 2.0))
    moving = head_volume(MOVING_AFFINE, MOVING_SHAPE, fixed_to_moving=truth, seed=1, path=Path("moving_T1.nii.gz"))
    return moving, truth, register(moving, fixed_head, method="sitk")


# --------------------------------------------------------------------------------------------------
# Conversions


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_affine_to_sitk_round_trip_is_exact(name: str) -> None:
    affine = AFFINES[name]
    volume = Volume(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32), affine, nib.Nifti1Header())
    image = volume_to_sitk(volume)
    np.testing.assert_allclose(affine_from_sitk(image), affine, atol=1e-12)
    origin, spacing, direction = affine_to_sitk_geometry(affine)
    assert image.GetOrigin() == pytest.approx(origin) and image.GetSpacing() == pytest.approx(spacing)
    for index in [(0, 0, 0), (4, 5, 6), (2, 0, 3)]:
        ras = affine @ np.r_[index, 1.0]
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(lps, (RAS_TO_LPS @ ras)[:3], atol=1e-9)
    # The voxel array comes back unchanged and in (X, Y, Z) order.
    assert image.GetSize() == volume.shape
    np.testing.assert_array_equal(sitk_to_array_on(image, volume), volume.data)
    assert image[4, 5, 6] == pytest.approx(float(volume.data[4, 5, 6]))


def test_sitk_to_array_on_refuses_another_grid() -> None:
    volume = Volume(np.zeros((5, 6, 7), np.float32), AFFINES["ras"], nib.Nifti1Header(), Path("a.nii.gz"))
    other = Volume(np.zeros((5, 6, 7), np.float32), AFFINES["lps"], nib.Nifti1Header())
    with pytest.raises(GeometryError, match="a.nii.gz"):
        sitk_to_array_on(volume_to_sitk(other), volume)


def test_transform_conversion_between_ras_and_lps() -> None:
    matrix = rigid_matrix((10.0, -20.0, 5.0), (3.0, -4.0, 7.0))
    matrix[:3, :3] *= np.array([1.02, 0.97, 1.05])  # also an affine part
    transform = matrix_to_sitk_transform(matrix)
    point_ras = np.array([12.0, -34.0, 56.0])
    mapped_lps = np.asarray(transform.TransformPoint(tuple(RAS_TO_LPS[:3, :3] @ point_ras)))
    np.testing.assert_allclose(RAS_TO_LPS[:3, :3] @ mapped_lps, matrix[:3, :3] @ point_ras + matrix[:3, 3], atol=1e-9)
    np.testing.assert_allclose(sitk_transform_to_matrix(transform), matrix, atol=1e-12)
    # A centred Euler transform (what the optimiser produces) reads back as the same matrix.
    euler = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    as_matrix = sitk_transform_to_matrix(euler)
    np.testing.assert_allclose(sitk_transform_to_matrix(matrix_to_sitk_transform(as_matrix)), as_matrix, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Resampling


def test_resample_onto_own_grid_is_identity() -> None:
    volume = head_volume(FIXED_AFFINE, FIXED_SHAPE, path=Path("t1.nii.gz"))
    for interpolation in ("linear", "nearest", "bspline"):
        out = resample_to_reference(volume, volume, interpolation=interpolation)
        np.testing.assert_allclose(out.data, volume.data, atol=1e-3)
        np.testing.assert_array_equal(out.affine, volume.affine)
    with pytest.raises(InputError, match="interpolation"):
        resample_to_reference(volume, volume, interpolation="cubic")


def test_resample_uses_world_coordinates_across_orientations() -> None:
    """Headers only: the same anatomy on an LPS grid and an oblique RAS grid must line up."""
    lps = head_volume(FIXED_AFFINE, FIXED_SHAPE, noise=0.0)
    oblique_affine = centred_affine((3.0, 3.5, 4.0), (56, 48, 44), rotation=rigid_matrix((15.0, 0.0, -10.0))[:3, :3])
    expected = head_volume(oblique_affine, (56, 48, 44), noise=0.0)
    out = resample_to_reference(lps, expected)
    assert out.shape == expected.shape and np.array_equal(out.affine, expected.affine)
    inside = expected.data > 30
    assert np.median(np.abs(out.data - expected.data)[inside]) < 2.0  # intensities 10-100, 4 mm voxels


def test_resample_with_transform_pulls_from_moving_world() -> None:
    volume = head_volume(FIXED_AFFINE, FIXED_SHAPE, noise=0.0)
    shift = np.eye(4)
    shift[:3, 3] = [8.0, 0.0, 0.0]  # fixed point x reads the moving image at x + 8 mm
    out = resample_to_reference(volume, volume, shift)
    # Voxel i of the output holds what voxel i - 2 held (x grows towards -i on this LPS grid).
    np.testing.assert_allclose(out.data[2:], volume.data[:-2], atol=1e-3)
    assert np.all(out.data[:2] == 0)  # background outside the moving image


# --------------------------------------------------------------------------------------------------
# The embedded method


def test_register_recovers_a_known_rigid_transform(known_case, fixed_head: Volume) -> None:
    moving, truth, result = known_case
    assert result.backend == "sitk" and result.dof == 6
    errors = displacement(result.transform, truth, head_points())
    # Measured 0.8 mm mean, 1.5 mm max on 4 mm voxels (the spec asks for under one voxel).
    assert errors.mean() < 1.5, f"mean {errors.mean():.2f} mm"
    assert errors.max() < 3.0, f"max {errors.max():.2f} mm"
    assert np.allclose(result.transform[:3, :3].T @ result.transform[:3, :3], np.eye(3), atol=1e-6)
    # The resampled image lies on the fixed grid and matches the truth's resampling.
    assert result.resampled.shape == fixed_head.shape
    np.testing.assert_array_equal(result.resampled.affine, fixed_head.affine)
    ideal = resample_to_reference(moving, fixed_head, truth)
    inside = ideal.data > 30
    assert np.median(np.abs(result.resampled.data - ideal.data)[inside]) < 2.0
    assert result.metric < -0.3 and result.seconds > 0
    record = json.loads(json.dumps(result.to_dict()))
    assert record["backend"] == "sitk" and "fixed (reference)" in record["transform_convention"]
    np.testing.assert_allclose(np.asarray(record["transform"]), result.transform)
    np.testing.assert_allclose(result.moving_to_fixed @ result.transform, np.eye(4), atol=1e-12)


def test_register_is_deterministic(known_case, fixed_head: Volume) -> None:
    moving, _, first = known_case
    second = register(moving, fixed_head, method="sitk")
    np.testing.assert_array_equal(first.transform, second.transform)
    assert first.metric == second.metric


def test_register_converges_from_a_large_rotation(fixed_head: Volume) -> None:
    truth = rigid_matrix((0.0, 0.0, 75.0), (6.0, 8.0, -5.0))
    moving = head_volume(MOVING_AFFINE, MOVING_SHAPE, fixed_to_moving=truth, seed=2)
    result = register(moving, fixed_head, method="sitk")
    errors = displacement(result.transform, truth, head_points())
    assert errors.mean() < 1.5, f"mean {errors.mean():.2f} mm after search start {result.details['search_start_deg']}"
    assert result.details["search_start_deg"] != [0.0, 0.0, 0.0]  # the coarse search did the work


def test_register_affine_recovers_scaling(fixed_head: Volume) -> None:
    truth = rigid_matrix((5.0, 0.0, -6.0), (4.0, -3.0, 2.0))
    truth[:3, :3] = truth[:3, :3] @ np.diag([1.06, 0.95, 1.03])
    moving = head_volume(MOVING_AFFINE, MOVING_SHAPE, fixed_to_moving=truth, seed=3)
    result = register(moving, fixed_head, method="sitk", dof=12)
    errors = displacement(result.transform, truth, head_points())
    assert result.dof == 12 and result.details["affine_accepted"]
    assert errors.mean() < 2.0, f"mean {errors.mean():.2f} mm"  # measured 1.4 mm (rigid: 4.2 mm)
    found = np.linalg.svd(result.transform[:3, :3], compute_uv=False)
    np.testing.assert_allclose(found, [1.06, 1.03, 0.95], atol=0.03)  # measured +0.015 on average


def test_non_overlapping_images_are_an_input_error(fixed_head: Volume) -> None:
    far = rigid_matrix((0.0, 0.0, 0.0), (1000.0, 0.0, 0.0))
    moving = head_volume(MOVING_AFFINE, MOVING_SHAPE, path=Path("far_T1.nii.gz"))
    moving = Volume(moving.data, far @ moving.affine, moving.header, moving.path)
    with pytest.raises(InputError, match=r"far_T1\.nii\.gz and fixed_T2\.nii\.gz do not overlap") as info:
        register(moving, fixed_head, method="sitk", init="header")
    assert "header" in info.value.hint


def test_metric_without_overlapping_samples_is_an_input_error(fixed_head: Volume, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError(
            "itk::ERROR: MattesMutualInformationImageToImageMetricv4(0x1): "
            "Too many samples map outside moving image buffer: 10 / 10000"
        )

    monkeypatch.setattr(reg, "_register_sitk", fail)
    with pytest.raises(InputError, match="do not overlap"):
        register(fixed_head, fixed_head, method="sitk")


def test_none_requires_one_grid(fixed_head: Volume) -> None:
    same = register(fixed_head, fixed_head, method="none")
    assert same.backend == "none" and np.array_equal(same.transform, np.eye(4))
    other = head_volume(MOVING_AFFINE, MOVING_SHAPE, path=Path("other_T1.nii.gz"))
    with pytest.raises(GeometryError) as info:
        register(other, fixed_head, method="none")
    text = info.value.one_line()
    assert "other_T1.nii.gz: shape (44, 48, 42)" in text and "fixed_T2.nii.gz: shape (48, 48, 48)" in text
    assert "--registration auto" in text


def test_bad_arguments(fixed_head: Volume) -> None:
    with pytest.raises(InputError, match="degrees of freedom"):
        register(fixed_head, fixed_head, method="sitk", dof=9)
    with pytest.raises(InputError, match="unknown registration method"):
        register(fixed_head, fixed_head, method="ants")


# --------------------------------------------------------------------------------------------------
# FSL matrices and transform files


def test_fsl_scaled_voxels_flip_x_for_neurological_images() -> None:
    ras = np.diag([2.0, 3.0, 4.0, 1.0])  # det > 0: neurological, x flipped
    np.testing.assert_allclose(fsl_scaled_voxel_matrix(ras, (10, 5, 5)) @ [0, 1, 1, 1], [18.0, 3.0, 4.0, 1.0])
    las = np.diag([-2.0, 3.0, 4.0, 1.0])  # det < 0: radiological, plain scaling
    np.testing.assert_allclose(fsl_scaled_voxel_matrix(las, (10, 5, 5)) @ [1, 1, 1, 1], [2.0, 3.0, 4.0, 1.0])


def test_flirt_matrix_hand_built_case() -> None:
    """Identity FLIRT matrix between two RAS grids of different widths is a 4 mm world shift.

    fixed: 10 voxels of 2 mm, x_fsl = (9 - i) * 2 = 18 - X; moving: 12 voxels, x_fsl = 22 - X.
    M = I means 18 - X_fixed = 22 - X_moving, i.e. X_moving = X_fixed + 4.
    """
    fixed = Grid(np.diag([2.0, 2.0, 2.0, 1.0]), (10, 10, 10))
    moving = Grid(np.diag([2.0, 2.0, 2.0, 1.0]), (12, 10, 10))
    expected = np.eye(4)
    expected[0, 3] = 4.0
    np.testing.assert_allclose(flirt_to_world(np.eye(4), moving, fixed), expected, atol=1e-12)
    np.testing.assert_allclose(world_to_flirt(expected, moving, fixed), np.eye(4), atol=1e-12)
    # A FLIRT translation of +3 mm in (radiological) x moves the fixed-world match by -3 mm in RAS x.
    shift = np.eye(4)
    shift[0, 3] = 3.0
    expected[0, 3] = 4.0 + 3.0
    np.testing.assert_allclose(flirt_to_world(shift, moving, fixed), expected, atol=1e-12)


@pytest.mark.parametrize("fixed_name,moving_name", [("oblique", "lps"), ("ras", "oblique"), ("lps", "ras")])
def test_flirt_conversion_matches_fslpy(tmp_path: Path, fixed_name: str, moving_name: str) -> None:
    from fsl.data.image import Image
    from fsl.transform.flirt import fromFlirt

    fixed_data = np.arange(12 * 14 * 10).reshape(12, 14, 10)
    moving_data = np.arange(9 * 11 * 13).reshape(9, 11, 13)
    fixed_path = write_nifti(tmp_path / "fixed.nii.gz", fixed_data, AFFINES[fixed_name])
    moving_path = write_nifti(tmp_path / "moving.nii.gz", moving_data, AFFINES[moving_name])
    fixed, moving = load_volume(fixed_path), load_volume(moving_path)
    transform = rigid_matrix((7.0, -11.0, 4.0), (5.0, 2.0, -3.0))
    matrix = world_to_flirt(transform, Grid.of(moving), Grid.of(fixed))
    moving_to_fixed = fromFlirt(matrix, Image(str(moving_path)), Image(str(fixed_path)), "world", "world")
    np.testing.assert_allclose(moving_to_fixed, np.linalg.inv(transform), atol=1e-4)


def test_save_and_load_tfm_and_mat(known_case, fixed_head: Volume, tmp_path: Path) -> None:
    moving, _, result = known_case
    tfm, mat = result.save(tmp_path / "T1_to_T2")
    assert tfm.name == "T1_to_T2.tfm" and mat.name == "T1_to_T2.mat"
    np.testing.assert_allclose(load_transform(tfm), result.transform, atol=1e-6)
    np.testing.assert_allclose(load_transform(mat, moving=moving, fixed=fixed_head), result.transform, atol=1e-6)
    # The .tfm is a plain ITK file that SimpleITK resamples with directly (LPS, fixed -> moving).
    itk = sitk.ReadTransform(str(tfm))
    point = np.array([10.0, -20.0, 30.0])
    mapped = RAS_TO_LPS[:3, :3] @ np.asarray(itk.TransformPoint(tuple(RAS_TO_LPS[:3, :3] @ point)))
    np.testing.assert_allclose(mapped, result.transform[:3, :3] @ point + result.transform[:3, 3], atol=1e-6)
    with pytest.raises(InputError, match="needs|only meaningful"):
        load_transform(mat)


def test_load_transform_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_transform(tmp_path / "missing.tfm")
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("this is not a transform\n")
    with pytest.raises(InputError, match=r"garbage\.tfm is not a readable ITK transform"):
        load_transform(garbage)
    bad_mat = tmp_path / "bad.mat"
    bad_mat.write_text("1 0 0\n0 1 0\n")
    volume = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), nib.Nifti1Header())
    with pytest.raises(InputError, match=r"bad\.mat"):
        load_transform(bad_mat, moving=volume, fixed=volume)


def test_load_transform_reads_itk_text_files(tmp_path: Path) -> None:
    """The open_ms dataset's format: a MatrixOffsetTransformBase with a centre (FixedParameters)."""
    path = tmp_path / "T1W_intrastudy_to_FLAIR.txt"
    path.write_text(
        textwrap.dedent("""\
        #Insight Transform File V1.0
        #Transform 0
        Transform: MatrixOffsetTransformBase_double_3_3
        Parameters: 1 0 0 0 1 0 0 0 1 1.5 -2 3
        FixedParameters: -0.85 11.45 -5.15
        """)
    )
    expected = np.eye(4)
    expected[:3, 3] = [-1.5, 2.0, 3.0]  # LPS (1.5, -2, 3) in RAS
    np.testing.assert_allclose(load_transform(path), expected, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# FLIRT through a mock FSLDIR (the command line is checked by the fake tool itself)

FAKE_FLIRT = """\
#!{python}
import os, sys
import nibabel as nib
import numpy as np

args = sys.argv[1:]
log = {log!r}
def value(flag):
    return args[args.index(flag) + 1]
problems = []
for flag, expected in (("-dof", {dof!r}), ("-cost", "corratio")):
    if flag not in args or value(flag) != expected:
        problems.append(f"{{flag}} should be {{expected}}")
for flag in ("-in", "-ref", "-omat", "-out"):
    if flag not in args:
        problems.append(f"missing {{flag}}")
if os.environ.get("FSLOUTPUTTYPE") != "NIFTI_GZ":
    problems.append("FSLOUTPUTTYPE is " + str(os.environ.get("FSLOUTPUTTYPE")))
if not problems:
    for flag in ("-in", "-ref"):
        if not os.path.isfile(value(flag)):
            problems.append(f"{{flag}} file missing")
with open(log, "w") as handle:
    handle.write(" ".join(args) + "\\n" + "\\n".join(problems))
if problems or {fail!r}:
    sys.stderr.write("Error: fake flirt refused: " + "; ".join(problems or ["asked to fail"]) + "\\n")
    sys.exit(1)
np.savetxt(value("-omat"), np.array({matrix!r}))
ref = nib.load(value("-ref"))
out = value("-out")
out = out if out.endswith(".nii.gz") else out + ".nii.gz"
nib.save(nib.Nifti1Image(np.asarray(ref.dataobj) * 0 + 7, ref.affine, ref.header), out)
"""


def make_fake_fsl(tmp_path: Path, monkeypatch, *, matrix: np.ndarray, dof: str = "6", fail: bool = False) -> Path:
    fsldir = tmp_path / "fsl"
    (fsldir / "bin").mkdir(parents=True)
    log = tmp_path / "flirt_call.txt"
    script = fsldir / "bin" / "flirt"
    script.write_text(
        FAKE_FLIRT.format(python=sys.executable, log=str(log), dof=dof, fail=fail, matrix=matrix.tolist())
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.delenv("FSLDEVDIR", raising=False)
    monkeypatch.setenv("FSLDIR", str(fsldir))
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI")  # must be overridden for the child process
    return log


def flirt_pair() -> tuple[Volume, Volume]:
    fixed = Volume(
        np.ones((10, 10, 10), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), nib.Nifti1Header(), Path("flair.nii.gz")
    )
    moving = Volume(
        np.ones((12, 10, 10), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), nib.Nifti1Header(), Path("t1.nii.gz")
    )
    fixed.data[2:8, 2:8, 2:8] = 5.0
    moving.data[3:9, 2:8, 2:8] = 5.0
    return moving, fixed


def test_flirt_backend_with_a_mock_fsldir(tmp_path: Path, monkeypatch) -> None:
    shift = np.eye(4)
    shift[0, 3] = 3.0  # the FLIRT matrix the fake tool "finds"
    log = make_fake_fsl(tmp_path, monkeypatch, matrix=shift)
    moving, fixed = flirt_pair()
    work = tmp_path / "work"
    result = register(moving, fixed, method="auto", work_dir=work)
    call = log.read_text()
    assert call.splitlines()[1:] == [], call
    assert result.backend == "fsl-flirt"
    expected = np.eye(4)
    expected[0, 3] = 7.0  # see test_flirt_matrix_hand_built_case
    np.testing.assert_allclose(result.transform, expected, atol=1e-9)
    np.testing.assert_allclose(np.loadtxt(work / "moving_to_fixed.mat"), shift)
    assert result.details["resampled_by"] == "flirt"
    assert np.all(result.resampled.data == 7) and np.array_equal(result.resampled.affine, fixed.affine)
    assert os.environ["FSLOUTPUTTYPE"] == "NIFTI"  # restored for this process
    tfm, mat = result.save(tmp_path / "saved")
    np.testing.assert_allclose(np.loadtxt(mat), shift, atol=1e-9)  # FLIRT's own matrix comes back


def test_flirt_dof12_and_failures(tmp_path: Path, monkeypatch) -> None:
    moving, fixed = flirt_pair()
    make_fake_fsl(tmp_path / "a", monkeypatch, matrix=np.eye(4), dof="12")
    assert register(moving, fixed, method="fsl", dof=12).backend == "fsl-flirt"
    make_fake_fsl(tmp_path / "b", monkeypatch, matrix=np.eye(4), fail=True)
    with pytest.raises(RuntimeFailure, match=r"FLIRT failed for t1\.nii\.gz -> flair\.nii\.gz.*asked to fail"):
        register(moving, fixed, method="fsl")
    monkeypatch.delenv("FSLDIR")
    with pytest.raises(RuntimeFailure, match="FSL is not set up") as info:
        register(moving, fixed, method="fsl")
    assert "--registration sitk" in info.value.hint
    assert register(moving, fixed, method="auto").backend == "sitk"  # no FSL: the embedded method
