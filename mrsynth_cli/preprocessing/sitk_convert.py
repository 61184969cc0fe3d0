"""Exact conversions between nibabel's RAS+ world and SimpleITK's LPS+ world.

nibabel describes a grid by one 4×4 voxel-to-world matrix ``A`` in RAS+ millimetres (x, y, z grow
towards the patient's Right, Anterior, Superior); ITK describes the same grid by an origin, a
spacing and a direction matrix in LPS+ millimetres (towards Left, Posterior, Superior: DICOM's
patient coordinate system). The two worlds differ by the flip ``F = diag(-1, -1, 1)``:

* ``p_lps = F @ p_ras``;
* ITK index→point: ``p_lps = origin + direction @ diag(spacing) @ index``, hence
  ``spacing = ‖A[:3, j]‖``, ``direction = F @ A[:3, :3] @ diag(1/spacing)``, ``origin = F @ A[:3, 3]``;
* a 4×4 point transform ``T_ras`` (world to world) is ``T_lps = F4 @ T_ras @ F4`` (``F4`` is its own
  inverse), in both directions.

ITK's axis order is (x, y, z) as nibabel's, but ``sitk.GetArrayFromImage`` returns a (z, y, x)
array, so arrays are transposed on the way in and out.

References: nibabel, "Coordinate systems and affines"
(https://nipy.org/nibabel/coordinate_systems.html); SimpleITK, "Fundamental Concepts: images are
physical objects" (https://simpleitk.readthedocs.io/en/master/fundamentalConcepts.html).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mrsynth_cli.errors import GeometryError
from mrsynth_cli.io.volume import Volume

__all__ = [
    "RAS_TO_LPS",
    "affine_to_sitk_geometry",
    "affine_from_sitk",
    "volume_to_sitk",
    "sitk_to_array_on",
    "sitk_to_volume",
    "ras_to_lps_transform",
    "lps_to_ras_transform",
    "matrix_to_sitk_transform",
    "sitk_transform_to_matrix",
]

#: The 4×4 flip between RAS+ and LPS+ world coordinates (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Geometry differences below this (mm, or unitless for directions) count as the same grid.
GRID_TOL = 1e-3


def affine_to_sitk_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """ITK ``(origin, spacing, direction)`` (LPS, direction row-major) of a RAS voxel-to-world affine.

    Args:
        affine: 4×4 voxel-to-world matrix in RAS+ mm, columns not necessarily unit length.

    Returns:
        ``origin`` (3), ``spacing`` (3) and ``direction`` (9, row-major) as SimpleITK expects them.
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = RAS_TO_LPS[:3, :3] @ affine[:3, :3] / spacing
    origin = RAS_TO_LPS[:3, :3] @ affine[:3, 3]
    return tuple(map(float, origin)), tuple(map(float, spacing)), tuple(map(float, direction.ravel()))


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """The RAS+ voxel-to-world 4×4 affine of a 3D SimpleITK image (inverse of :func:`affine_to_sitk_geometry`)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS[:3, :3] @ direction * spacing
    affine[:3, 3] = RAS_TO_LPS[:3, :3] @ origin
    return affine


def volume_to_sitk(volume: Volume, data: np.ndarray | None = None) -> sitk.Image:
    """A float32 SimpleITK image holding ``volume`` (or ``data`` on its grid) in the same physical place.

    Args:
        volume: the grid (and, unless ``data`` is given, the voxel values).
        data: optional array of ``volume.shape`` to put on that grid instead (any real dtype).
    """
    array = volume.data if data is None else np.asarray(data)
    if tuple(array.shape) != volume.shape:
        raise GeometryError(f"data of shape {tuple(array.shape)} does not fit the grid {volume.shape} of {volume.name}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32), isVector=False)
    origin, spacing, direction = affine_to_sitk_geometry(volume.affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _same_grid(image: sitk.Image, grid: Volume) -> bool:
    if tuple(image.GetSize()) != grid.shape:
        return False
    return bool(np.allclose(affine_from_sitk(image), grid.affine, atol=GRID_TOL))


def sitk_to_array_on(image: sitk.Image, grid: Volume) -> np.ndarray:
    """The (X, Y, Z) float32 array of ``image``, checked to lie exactly on ``grid``'s voxels.

    Args:
        image: a 3D scalar SimpleITK image (e.g. the output of ``sitk.Resample(..., reference, ...)``).
        grid: the volume whose grid ``image`` must share.

    Raises:
        GeometryError: the image's size, origin, spacing or direction differ from the grid's.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(f"a resampled image for {grid.name} is not a 3D scalar image")
    if not _same_grid(image, grid):
        raise GeometryError(
            f"a resampled image (size {image.GetSize()}) is not on the grid {grid.shape} of {grid.name}",
            "this is a bug in the resampling step; please report it",
        )
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


def sitk_to_volume(image: sitk.Image, grid: Volume) -> Volume:
    """A :class:`Volume` on ``grid`` (its affine, header, path and contrast) holding ``image``'s values."""
    return grid.with_data(sitk_to_array_on(image, grid))


def ras_to_lps_transform(matrix: np.ndarray) -> np.ndarray:
    """A 4×4 world-to-world point transform in RAS+ mm rewritten for LPS+ mm (``F @ T @ F``)."""
    return RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64) @ RAS_TO_LPS


def lps_to_ras_transform(matrix: np.ndarray) -> np.ndarray:
    """A 4×4 world-to-world point transform in LPS+ mm rewritten for RAS+ mm (``F @ T @ F``)."""
    return RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64) @ RAS_TO_LPS


def matrix_to_sitk_transform(matrix_ras: np.ndarray) -> sitk.AffineTransform:
    """A SimpleITK ``AffineTransform`` (LPS, centre 0) applying the RAS 4×4 point transform ``matrix_ras``."""
    lps = ras_to_lps_transform(matrix_ras)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(map(float, lps[:3, :3].ravel())))
    transform.SetTranslation(tuple(map(float, lps[:3, 3])))
    return transform


def sitk_transform_to_matrix(transform: sitk.Transform, check_points: np.ndarray | None = None) -> np.ndarray:
    """The RAS 4×4 point transform of a linear SimpleITK transform (any kind, composites included).

    The matrix is read off by mapping the origin and the unit vectors, which works for every linear
    transform whatever its parameterisation (centre, versor, Euler angles, composite stacks).

    Args:
        transform: a SimpleITK transform mapping LPS points to LPS points.
        check_points: optional (N, 3) LPS points at which linearity is verified (default: a few
            points ±100 mm around the origin).

    Raises:
        ValueError: the transform is not linear (e.g. a displacement field or B-spline).
    """
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    lps = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        lps[:3, axis] = np.asarray(transform.TransformPoint(tuple(unit))) - origin
    lps[:3, 3] = origin
    points = check_points if check_points is not None else np.array([[100.0, -80.0, 60.0], [-90.0, 110.0, -70.0]])
    for point in np.asarray(points, dtype=np.float64):
        mapped = np.asarray(transform.TransformPoint(tuple(map(float, point))))
        if not np.allclose(mapped, lps[:3, :3] @ point + lps[:3, 3], atol=1e-4):
            raise ValueError(f"the transform ({transform.GetName()}) is not linear")
    return lps_to_ras_transform(lps)
