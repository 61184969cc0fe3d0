"""Rigid/affine registration of one contrast onto another: FSL FLIRT when present, else SimpleITK.

Conventions used throughout (and written into every record):

* **World** coordinates are nibabel's RAS+ millimetres (``Volume.affine`` maps voxels to them).
* A **transform** is a 4×4 matrix ``T`` that maps a point of the *fixed* (reference) image's world
  to the corresponding point of the *moving* image's world: ``x_moving = T @ x_fixed``. This is the
  "pull" direction that resampling needs (for every output voxel, where to read the moving image)
  and the direction ITK's transform files use (there in LPS+; ``T_lps = F T F`` with
  ``F = diag(-1, -1, 1, 1)``). Its inverse moves the moving image onto the fixed one.
* An **FSL/FLIRT matrix** maps the *moving* (``-in``) image's FSL scaled-voxel coordinates to the
  *fixed* (``-ref``) image's, where scaled voxels are voxel indices times voxel sizes, with the x
  axis flipped (``x' = (nx - 1 - i) * dx``) when the voxel-to-world matrix has a positive
  determinant ("neurological" storage). Source: FSL FLIRT FAQ, "What is the format of the matrix
  used by FLIRT, and how does it relate to the transformation parameters?"
  (https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/FLIRT/FAQ) and fslpy's ``fsl.transform.flirt``.

The embedded SimpleITK method follows FLIRT's design (Jenkinson & Smith, "A global optimisation
method for robust affine registration of brain images", Medical Image Analysis 5(2), 2001): a
resolution pyramid in millimetres, a coarse search over rotations at the lowest resolution (the
local optimiser alone gets stuck for large initial rotations), then local refinement. The similarity
is Mattes mutual information (Mattes et al., "PET-CT image registration in the chest using
free-form deformations", IEEE TMI 22(1), 2003) with 50 bins, because SimpleITK has no
correlation-ratio metric; settings follow the SimpleITK registration notebooks
(InsightSoftwareConsortium/SimpleITK-Notebooks, ``60_Registration_Introduction``). Details that
matter in practice, each explained where it is implemented:

* metric samples come only from the fixed image's foreground (plus a 10 mm margin), so that
  moving background in or out of the overlap does not pay (:class:`SitkSettings`);
* coordinates are normalised by the head's radius of gyration so that one step length suits
  rotations, matrix entries and translations alike (:class:`_Levels`);
* every level is checked to have improved the metric, else its start is kept (:func:`_run_level`);
* sampling uses a fixed, non-zero seed and ITK runs single-threaded during registration, so two
  runs give bit-identical matrices (:func:`_sitk_seed`, :func:`_itk_threads`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from mrsynth_cli.errors import InputError, RuntimeFailure
from mrsynth_cli.fsl import find_fsl_tool, fsl_output_type
from mrsynth_cli.io.atomic import atomic_path
from mrsynth_cli.io.volume import Volume, check_same_grid
from mrsynth_cli.preprocessing.sitk_convert import (
    matrix_to_sitk_transform,
    sitk_to_array_on,
    sitk_transform_to_matrix,
    volume_to_sitk,
)

__all__ = [
    "REGISTRATION_METHODS",
    "INTERPOLATIONS",
    "Grid",
    "RegistrationResult",
    "SitkSettings",
    "register",
    "resample_to_reference",
    "load_transform",
    "save_transform",
    "fsl_scaled_voxel_matrix",
    "world_to_flirt",
    "flirt_to_world",
    "rigid_matrix",
    "TRANSFORM_CONVENTION",
]

log = logging.getLogger(__name__)

REGISTRATION_METHODS = ("auto", "fsl", "sitk", "none")
INTERPOLATIONS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}

#: What :attr:`RegistrationResult.transform` means, copied into every JSON record.
TRANSFORM_CONVENTION = (
    "4x4 matrix in world RAS+ mm mapping a point of the fixed (reference) image to the corresponding point "
    "of the moving image (x_moving = T @ x_fixed; ITK's resampling direction); its inverse maps moving to fixed"
)


@dataclass(frozen=True)
class Grid:
    """The geometry of a volume, kept so that transforms can be re-expressed (e.g. for FSL).

    Attributes:
        affine: 4×4 voxel-to-world RAS+ matrix.
        shape: voxel counts (X, Y, Z).
        name: the file, for messages.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    name: str = "<in-memory volume>"

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(np.asarray(volume.affine, dtype=np.float64).copy(), volume.shape, volume.name)


# --------------------------------------------------------------------------------------------------
# Small matrix helpers


def rigid_matrix(
    angles_deg: tuple[float, float, float] | np.ndarray,
    translation_mm: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
    center: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A 4×4 rigid transform: rotate by ``R = Rz @ Ry @ Rx`` about ``center``, then translate.

    Args:
        angles_deg: rotations about the x, y and z axes in degrees.
        translation_mm: translation applied after the rotation.
        center: the fixed point of the rotation.
    """
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cx, cy, cz, sx, sy, sz = math.cos(ax), math.cos(ay), math.cos(az), math.sin(ax), math.sin(ay), math.sin(az)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rotation = rot_z @ rot_y @ rot_x
    center = np.asarray(center, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = center - rotation @ center + np.asarray(translation_mm, dtype=np.float64)
    return matrix


def _is_rigid(matrix: np.ndarray, tol: float = 1e-6) -> bool:
    linear = matrix[:3, :3]
    return bool(np.allclose(linear.T @ linear, np.eye(3), atol=tol) and np.linalg.det(linear) > 0)


# --------------------------------------------------------------------------------------------------
# FSL scaled-voxel conventions


def fsl_scaled_voxel_matrix(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The 4×4 matrix from voxel indices to FSL's scaled-voxel coordinates (mm).

    FSL scales voxel indices by the voxel sizes and, when the voxel-to-world matrix has a positive
    determinant (neurological voxel order), flips the x axis so that its internal coordinates are
    always radiological: ``x' = (nx - 1 - i) * dx``. Voxel sizes are the affine's column norms
    (what FSL reads as pixdim for a consistent header).

    Args:
        affine: the voxel-to-world matrix (the sform/qform FSL uses).
        shape: the voxel counts (X, Y, Z).
    """
    affine = np.asarray(affine, dtype=np.float64)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    matrix = np.diag([sizes[0], sizes[1], sizes[2], 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1.0
        flip[0, 3] = shape[0] - 1
        matrix = matrix @ flip
    return matrix


def _world_to_fsl(grid: Grid) -> np.ndarray:
    return fsl_scaled_voxel_matrix(grid.affine, grid.shape) @ np.linalg.inv(grid.affine)


def world_to_flirt(transform: np.ndarray, moving: Grid, fixed: Grid) -> np.ndarray:
    """Express a world transform (fixed → moving, RAS mm) as a FLIRT matrix (moving → fixed, FSL mm).

    ``M = W2F_fixed @ inv(T) @ inv(W2F_moving)`` with ``W2F = S @ inv(A)`` (``S`` from
    :func:`fsl_scaled_voxel_matrix`), so that ``flirt -applyxfm -init M -in moving -ref fixed``
    reproduces the same resampling.
    """
    return (
        _world_to_fsl(fixed)
        @ np.linalg.inv(np.asarray(transform, dtype=np.float64))
        @ np.linalg.inv(_world_to_fsl(moving))
    )


def flirt_to_world(flirt_matrix: np.ndarray, moving: Grid, fixed: Grid) -> np.ndarray:
    """The inverse of :func:`world_to_flirt`: a FLIRT ``-omat`` matrix as a fixed → moving RAS transform."""
    moving_to_fixed = (
        np.linalg.inv(_world_to_fsl(fixed)) @ np.asarray(flirt_matrix, dtype=np.float64) @ _world_to_fsl(moving)
    )
    return np.linalg.inv(moving_to_fixed)


# --------------------------------------------------------------------------------------------------
# Result, saving and loading


@dataclass
class RegistrationResult:
    """What :func:`register` found.

    Attributes:
        backend: ``"fsl-flirt"``, ``"sitk"``, or ``"none"`` (identity, inputs already on one grid).
        transform: 4×4 world RAS+ mm matrix mapping fixed-image points to moving-image points
            (``x_moving = transform @ x_fixed``); see :data:`TRANSFORM_CONVENTION`.
        resampled: the moving image resampled onto the fixed grid (fixed affine and header).
        metric: final similarity value: Mattes mutual information (negative; lower is better),
            evaluated by SimpleITK for both backends so that they can be compared.
        seconds: wall-clock time of the registration.
        dof: 6 (rigid) or 12 (affine).
        moving: the moving image's grid.
        fixed: the fixed image's grid.
        details: backend diagnostics (optimiser stop conditions, the chosen coarse rotation, FLIRT
            command, ...).
    """

    backend: str
    transform: np.ndarray
    resampled: Volume
    metric: float
    seconds: float
    dof: int
    moving: Grid
    fixed: Grid
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def moving_to_fixed(self) -> np.ndarray:
        """The inverse transform: moving-image world points to fixed-image world points (RAS mm)."""
        return np.linalg.inv(self.transform)

    @property
    def flirt_matrix(self) -> np.ndarray:
        """The transform as FLIRT would write it (``-in`` moving, ``-ref`` fixed); see :func:`world_to_flirt`."""
        return world_to_flirt(self.transform, self.moving, self.fixed)

    def save(self, path_without_suffix: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.tfm`` (ITK, LPS, fixed → moving) and ``<path>.mat`` (FSL, moving → fixed).

        Both files appear atomically. Load either back with :func:`load_transform`.

        Returns:
            The ``.tfm`` and ``.mat`` paths.
        """
        base = Path(path_without_suffix)
        tfm = base.with_name(base.name + ".tfm")
        mat = base.with_name(base.name + ".mat")
        save_transform(self.transform, tfm)
        with atomic_path(mat, suffix=".mat") as tmp:
            np.savetxt(tmp, self.flirt_matrix, fmt="%.10f", delimiter="  ")
        return tfm, mat

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the registration (no image data)."""
        return {
            "backend": self.backend,
            "dof": self.dof,
            "transform": [[float(v) for v in row] for row in self.transform],
            "transform_convention": TRANSFORM_CONVENTION,
            "flirt_matrix": [[float(v) for v in row] for row in self.flirt_matrix],
            "metric": None if not np.isfinite(self.metric) else float(self.metric),
            "metric_name": "Mattes mutual information (50 bins; negative, lower is better)",
            "seconds": round(float(self.seconds), 3),
            "moving": self.moving.name,
            "fixed": self.fixed.name,
            "details": self.details,
        }


def save_transform(transform: np.ndarray, path: str | Path) -> Path:
    """Write a fixed → moving RAS 4×4 transform as an ITK transform file (``.tfm``/``.txt``, LPS).

    The file holds an ``AffineTransform_double_3_3``, readable by ``sitk.ReadTransform``, ANTs and
    Slicer, in ITK's own direction (fixed → moving, as a resampling transform).
    """
    path = Path(path)
    with atomic_path(path, suffix=path.suffix or ".tfm") as tmp:
        sitk.WriteTransform(matrix_to_sitk_transform(transform), str(tmp))
    return path


def load_transform(path: str | Path, *, moving: Volume | None = None, fixed: Volume | None = None) -> np.ndarray:
    """Read a transform file as a fixed → moving RAS 4×4 matrix (the :class:`RegistrationResult` convention).

    ITK files (``.tfm``, ``.txt``, ``.h5``; any linear transform, composites included) are read with
    SimpleITK. FSL ``.mat`` files hold scaled-voxel coordinates, so they need both images' grids.

    Args:
        path: the transform file.
        moving: the image the transform was computed for as ``-in`` (FSL matrices only).
        fixed: the reference image (``-ref``; FSL matrices only).

    Raises:
        InputError: the file is missing or unreadable, not a linear transform, or an FSL matrix
            without the grids it needs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform file {path} does not exist", "check the path")
    if path.suffix.lower() == ".mat":
        if moving is None or fixed is None:
            raise InputError(
                f"{path} is an FSL matrix, which is only meaningful with its input and reference images",
                "pass both the moving (-in) and the fixed (-ref) volume",
            )
        try:
            matrix = np.loadtxt(path, dtype=np.float64)
        except ValueError as exc:
            raise InputError(
                f"{path} is not a readable FSL matrix ({str(exc).splitlines()[0][:100]})",
                "an FSL .mat holds 4 rows of 4 numbers",
            ) from exc
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-9:
            raise InputError(f"{path} is not a valid 4×4 FSL matrix", "an FSL .mat holds 4 rows of 4 numbers")
        return flirt_to_world(matrix, Grid.of(moving), Grid.of(fixed))
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "unknown error")
        raise InputError(
            f"{path} is not a readable ITK transform file ({first[-120:]})",
            "give a .tfm/.txt/.h5 written by ITK, SimpleITK, ANTs or mrsynth",
        ) from exc
    try:
        return sitk_transform_to_matrix(transform)
    except ValueError as exc:
        raise InputError(f"{path} holds a non-linear transform ({exc})", "give a rigid or affine transform") from exc


# --------------------------------------------------------------------------------------------------
# Resampling


def resample_to_reference(
    moving: Volume,
    reference: Volume,
    transform: np.ndarray | None = None,
    interpolation: str = "linear",
) -> Volume:
    """Resample ``moving`` onto ``reference``'s grid through world coordinates.

    Without a transform the two headers alone place the images (the usual case for inputs from one
    session). With one, ``transform`` maps reference-world points to moving-world points (the
    :class:`RegistrationResult` convention). Voxels that fall outside the moving image are 0.

    Args:
        moving: the image to resample.
        reference: the grid of the result (its affine and header are copied).
        transform: optional 4×4 fixed → moving RAS matrix.
        interpolation: ``"linear"``, ``"nearest"`` (labels and masks) or ``"bspline"`` (cubic).

    Returns:
        A volume on the reference grid (reference affine and header; the moving image's path and
        contrast, so that messages still name its source).
    """
    if interpolation not in INTERPOLATIONS:
        raise InputError(
            f"unknown interpolation {interpolation!r} for {moving.name}",
            f"choose one of {', '.join(INTERPOLATIONS)}",
        )
    matrix = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"the transform for {moving.name} is not a finite 4×4 matrix", "check the transform file")
    moving_image = volume_to_sitk(moving)
    reference_image = volume_to_sitk(reference, np.zeros(reference.shape, dtype=np.float32))
    resampled = sitk.Resample(
        moving_image,
        reference_image,
        matrix_to_sitk_transform(matrix),
        INTERPOLATIONS[interpolation],
        0.0,
        sitk.sitkFloat32,
    )
    data = sitk_to_array_on(resampled, reference)
    return Volume(data, reference.affine.copy(), reference.header.copy(), moving.path, moving.contrast)


# --------------------------------------------------------------------------------------------------
# The embedded SimpleITK method


@dataclass(frozen=True)
class SitkSettings:
    """Settings of the embedded registration (defaults tuned on clinical 0.5–1 × 3–4 mm brain MRI).

    Attributes:
        level_mm: target voxel size of each pyramid level, coarse to fine; an axis is only
            downsampled (Gaussian-smoothed, sigma = half the new voxel size, then subsampled) when
            its voxel is smaller than the target; ``0`` means native resolution.
        samples: metric samples drawn at random (fixed seed) from the fixed image per level.
        iterations: optimiser iterations per level.
        bins: Mattes mutual-information histogram bins.
        search_angles_deg: the coarse search tries every combination of these rotations about
            the three axes, plus ``search_flips_deg`` about each axis alone.
        search_flips_deg: large single-axis rotations added to the search.
        search_keep: how many of the best search candidates get a local optimisation at the
            coarsest level before one is chosen (the unrotated start is always one of them).
        affine_levels: how many of the finest levels the affine (12 DOF) stage runs on.
        threads: ITK threads during the registration; 1 (default) makes two runs bit-identical and
            the result independent of the machine's core count, more is faster but not reproducible.
        clip_percentile: intensities above this percentile are clipped before registration so
            that a few very bright voxels do not squeeze the histogram.
        foreground_margin_mm: metric samples are drawn only from the fixed image's foreground (Otsu
            threshold, holes filled) grown by this margin; ``None`` samples the whole field of view.
        relaxation: the step shrinks by this factor whenever the gradient turns back.
        min_step_fraction: a level stops when its step falls below this fraction of its first step
            (coarser levels, finest level).
        affine_step_fraction: first step of the affine stage, as a fraction of the level's voxel size.
    """

    level_mm: tuple[float, ...] = (6.0, 3.0, 1.5, 0.0)
    samples: tuple[int, ...] = (12000, 20000, 40000, 60000)
    iterations: tuple[int, ...] = (100, 100, 100, 60)
    bins: int = 50
    search_angles_deg: tuple[float, ...] = (-30.0, 0.0, 30.0)
    search_flips_deg: tuple[float, ...] = (90.0, -90.0, 180.0)
    search_keep: int = 4
    affine_levels: int = 2
    threads: int = 1
    clip_percentile: float = 99.5
    foreground_margin_mm: float | None = 10.0
    relaxation: float = 0.6
    min_step_fraction: tuple[float, float] = (0.01, 0.001)
    affine_step_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not len(self.level_mm) == len(self.samples) == len(self.iterations) >= 1:
            raise ValueError("level_mm, samples and iterations need one entry per level")


def _prepare_intensities(volume: Volume, clip_percentile: float) -> np.ndarray:
    data = volume.data
    sample = data.ravel()[:: max(1, data.size // 2_000_000)]
    low = float(sample.min())
    high = float(np.percentile(sample[sample > low], clip_percentile)) if np.any(sample > low) else float(sample.max())
    return np.clip(data, low, high).astype(np.float32, copy=False)


def _factors(affine: np.ndarray, target_mm: float) -> tuple[int, ...]:
    """Per-axis subsampling factors that bring the voxel size near ``target_mm`` (1 = keep)."""
    if target_mm <= 0:
        return (1, 1, 1)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return tuple(int(f) for f in np.maximum(1, np.floor(target_mm / spacing + 0.5)))


def _pyramid_level(data: np.ndarray, affine: np.ndarray, target_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth and subsample an image to about ``target_mm`` per axis (axes already coarser are kept)."""
    factors = np.asarray(_factors(affine, target_mm))
    if np.all(factors == 1):
        return data, affine
    sigma_vox = np.where(factors > 1, 0.5 * factors, 0.0)
    smoothed = ndimage.gaussian_filter(data, sigma=sigma_vox, mode="nearest", truncate=3.0)
    sub = np.ascontiguousarray(smoothed[:: factors[0], :: factors[1], :: factors[2]])
    return sub, affine @ np.diag([factors[0], factors[1], factors[2], 1.0])


def _otsu_threshold(data: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance; Otsu, IEEE TSMC 9(1), 1979) of a subsample."""
    values = data.ravel()[:: max(1, data.size // 1_000_000)].astype(np.float64)
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight = np.cumsum(counts).astype(np.float64)
    total = weight[-1]
    cumulative = np.cumsum(counts * centres)
    mean_low = cumulative / np.maximum(weight, 1)
    mean_high = (cumulative[-1] - cumulative) / np.maximum(total - weight, 1)
    between = weight * (total - weight) * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _foreground(data: np.ndarray, affine: np.ndarray, threshold: float, margin_mm: float) -> np.ndarray:
    """Voxels above ``threshold`` (the head), holes filled, grown by ``margin_mm``."""
    mask = ndimage.binary_fill_holes(data > threshold)
    if margin_mm > 0 and mask.any():
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        mask = ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm
    return mask


def _radius_of_gyration(data: np.ndarray, affine: np.ndarray) -> float:
    """RMS distance (mm) of the intensity from its centre of mass, clipped to 20-100 mm (a head: ~60)."""
    weights = np.clip(data.astype(np.float64) - float(data.min()), 0, None).ravel()
    total = weights.sum()
    if total <= 0:
        return 50.0
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in data.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    points = ijk @ affine[:3, :3].T
    w = weights / total
    centre = w @ points
    return float(np.clip(math.sqrt(float(w @ ((points - centre) ** 2).sum(axis=1))), 20.0, 100.0))


def _sitk_image(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    return volume_to_sitk(Volume(data, affine, nib.Nifti1Header()), data)


class _Levels:
    """Fixed and moving images (and fixed masks) at each pyramid level, in normalised world units.

    World coordinates are divided by ``unit_mm``, the fixed image's radius of gyration (about 60 mm
    for a head). In these units a unit change of any parameter (a rotation in radians, a matrix
    entry, a translation) moves the anatomy by about the same distance, so one step length suits
    all parameters; this is the usual normalisation of coordinates before estimating a transform
    (Hartley, "In defense of the eight-point algorithm", IEEE PAMI 19(6), 1997). It replaces
    ITK's optimiser scales, which leave the step length of its gradient-descent optimisers in
    parameter units (a step of 2 changes a matrix entry by 2) and, when estimated from the image
    corners, depend on the field of view and on random sampling.
    """

    def __init__(
        self, moving: Volume, fixed: Volume, settings: SitkSettings, fixed_mask: np.ndarray | None = None
    ) -> None:
        moving_data = _prepare_intensities(moving, settings.clip_percentile)
        fixed_data = _prepare_intensities(fixed, settings.clip_percentile)
        use_foreground = fixed_mask is None and settings.foreground_margin_mm is not None
        threshold = _otsu_threshold(fixed_data) if use_foreground else None
        # Levels whose images would be identical (coarse inputs) are merged into the finer one,
        # keeping the larger sample count and iteration budget.
        targets: list[tuple[float, int, int]] = []
        for target, samples, iterations in zip(settings.level_mm, settings.samples, settings.iterations, strict=True):
            if targets and all(
                _factors(a, targets[-1][0]) == _factors(a, target) for a in (fixed.affine, moving.affine)
            ):
                _, last_samples, last_iterations = targets.pop()
                samples, iterations = max(samples, last_samples), max(iterations, last_iterations)
            targets.append((target, samples, iterations))
        self.targets = [t for t, _, _ in targets]
        self.iterations = [i for _, _, i in targets]
        pyramid = [
            (_pyramid_level(fixed_data, fixed.affine, target), _pyramid_level(moving_data, moving.affine, target))
            for target, _, _ in targets
        ]
        self.unit_mm = _radius_of_gyration(*pyramid[0][0])
        to_units = np.diag([1.0 / self.unit_mm] * 3 + [1.0])
        self.fixed: list[sitk.Image] = []
        self.moving: list[sitk.Image] = []
        self.masks: list[sitk.Image | None] = []
        self.percent: list[float] = []
        self.spacing: list[float] = []
        for ((f_data, f_affine), (m_data, m_affine)), (target, samples, _) in zip(pyramid, targets, strict=True):
            self.fixed.append(_sitk_image(f_data, to_units @ f_affine))
            self.moving.append(_sitk_image(m_data, to_units @ m_affine))
            self.spacing.append(float(np.mean(np.linalg.norm(f_affine[:3, :3], axis=0))) / self.unit_mm)
            mask: np.ndarray | None = None
            if fixed_mask is not None:
                mask = _pyramid_level(np.asarray(fixed_mask, dtype=np.float32), fixed.affine, target)[0] > 0.25
            elif threshold is not None:
                mask = _foreground(f_data, f_affine, threshold, float(settings.foreground_margin_mm or 0.0))
            if mask is None or not mask.any():
                self.masks.append(None)
                count = f_data.size
            else:
                self.masks.append(sitk.Cast(_sitk_image(mask.astype(np.float32), to_units @ f_affine), sitk.sitkUInt8))
                count = int(mask.sum())
            self.percent.append(float(min(1.0, samples / count)))

    def from_mm(self, transform_mm: np.ndarray) -> np.ndarray:
        """A 4×4 transform between millimetre worlds as one between normalised worlds."""
        scale = np.diag([self.unit_mm] * 3 + [1.0])
        return np.linalg.inv(scale) @ np.asarray(transform_mm, dtype=np.float64) @ scale

    def to_mm(self, transform_units: np.ndarray) -> np.ndarray:
        """A 4×4 transform between normalised worlds as one between millimetre worlds."""
        scale = np.diag([self.unit_mm] * 3 + [1.0])
        return scale @ transform_units @ np.linalg.inv(scale)


def _bounding_box_corners(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize()) - 1
    corners = np.array(list(itertools.product(*[(0, s) for s in size])), dtype=np.float64)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, c))) for c in corners])


def _boxes_overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> bool:
    """Whether the fixed image's box, mapped into moving space, meets the moving image's box.

    The mapped corners' bounding box is compared with the moving box in the moving image's index
    space (exact for the moving box; conservative, i.e. never a false "no overlap", for the fixed one).
    """
    mapped = [transform.TransformPoint(tuple(map(float, p))) for p in _bounding_box_corners(fixed)]
    index = np.array([moving.TransformPhysicalPointToContinuousIndex(p) for p in mapped])
    size = np.asarray(moving.GetSize()) - 1
    return bool(np.all(index.max(axis=0) >= -0.5) and np.all(index.min(axis=0) <= size + 0.5))


def _no_overlap_error(moving: Volume, fixed: Volume, detail: str) -> InputError:
    return InputError(
        f"{moving.name} and {fixed.name} do not overlap in space ({detail})",
        "check that both files show the same head (their headers place them apart); "
        "fix the header or register them by hand first",
    )


_OVERLAP_MESSAGES = ("outside moving image buffer", "all samples map outside", "no valid points")


def _is_overlap_failure(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return any(message in text for message in _OVERLAP_MESSAGES)


def _sitk_seed(seed: int) -> int:
    """A non-zero sampling seed for SimpleITK (0 there means "wall clock", i.e. not reproducible)."""
    return int(seed) % (2**31 - 2) + 1


def _method(levels: _Levels, index: int, settings: SitkSettings, seed: int) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(settings.threads)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(levels.percent[index], _sitk_seed(seed))
    if levels.masks[index] is not None:
        method.SetMetricFixedMask(levels.masks[index])
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([0.0])
    return method


def _run_level(
    levels: _Levels, index: int, transform: sitk.Transform, settings: SitkSettings, seed: int, step: float
) -> tuple[sitk.Transform, float, str]:
    """Optimise ``transform`` in place at one level (regular-step gradient descent, first step ``step``).

    Regular-step gradient descent does not guarantee a decrease: on a noisy level it can wander
    off. The metric is therefore evaluated on the level's samples before and after, and the start
    is kept when the optimiser made it worse.
    """
    before = _evaluate(levels, index, transform, settings, seed)
    start = transform.GetParameters()
    method = _method(levels, index, settings, seed)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step,
        minStep=step * settings.min_step_fraction[1 if index == len(levels.fixed) - 1 else 0],
        numberOfIterations=levels.iterations[index],
        relaxationFactor=settings.relaxation,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(levels.fixed[index], levels.moving[index])
    stop = method.GetOptimizerStopConditionDescription()
    after = _evaluate(levels, index, transform, settings, seed)
    if after > before:
        transform.SetParameters(start)
        return transform, before, f"reverted (metric {after:.4f} > {before:.4f} at the start) after: {stop}"
    return transform, after, stop


def _evaluate(levels: _Levels, index: int, transform: sitk.Transform, settings: SitkSettings, seed: int) -> float:
    method = _method(levels, index, settings, seed)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(levels.fixed[index], levels.moving[index]))


def _search_rotations(settings: SitkSettings) -> list[tuple[float, float, float]]:
    angles = settings.search_angles_deg
    candidates: list[tuple[float, float, float]] = list(itertools.product(angles, angles, angles))
    for axis in range(3):
        for angle in settings.search_flips_deg:
            rotation = [0.0, 0.0, 0.0]
            rotation[axis] = angle
            candidates.append((rotation[0], rotation[1], rotation[2]))
    return list(dict.fromkeys(candidates))


def _euler_from(
    center: np.ndarray, translation: np.ndarray, angles_deg: tuple[float, float, float]
) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(map(float, center)))
    transform.SetRotation(*[math.radians(a) for a in angles_deg])
    transform.SetTranslation(tuple(map(float, translation)))
    return transform


@contextlib.contextmanager
def _itk_threads(count: int) -> Iterator[None]:
    """Run ITK filters with ``count`` threads, then restore the global default.

    The registration method's own thread count is not enough: part of the metric's work runs on the
    global default, and multi-threaded sums differ in their last bits from run to run (verified with
    SimpleITK 2.5, Platform and Pool threaders). One thread makes two runs bit-identical.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _initial_pose(levels: _Levels, init: str) -> tuple[np.ndarray, np.ndarray]:
    """Rotation centre and translation (normalised units) of the starting pose."""
    fixed, moving = levels.fixed[0], levels.moving[0]
    if init == "header":
        return np.mean(_bounding_box_corners(fixed), axis=0), np.zeros(3)
    mode = (
        sitk.CenteredTransformInitializerFilter.MOMENTS
        if init == "moments"
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    initial = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode))
    return np.asarray(initial.GetCenter()), np.asarray(initial.GetTranslation())


def _register_sitk(
    moving: Volume,
    fixed: Volume,
    dof: int,
    seed: int,
    settings: SitkSettings,
    init: str,
    fixed_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    levels = _Levels(moving, fixed, settings, fixed_mask)
    center, translation = _initial_pose(levels, init)
    shift_mm = float(np.linalg.norm(translation)) * levels.unit_mm
    details: dict[str, Any] = {
        "init": init,
        "levels_mm": list(levels.targets),
        "threads": settings.threads,
        "seed": seed,
        "unit_mm": round(levels.unit_mm, 3),
        "initial_translation_mm": [round(float(v) * levels.unit_mm, 3) for v in translation],
    }
    if shift_mm > 60:
        log.warning(
            "%s and %s are %.0f mm apart by their headers; aligning their centres first",
            moving.name,
            fixed.name,
            shift_mm,
        )
    if not _boxes_overlap(levels.fixed[0], levels.moving[0], _euler_from(center, translation, (0.0, 0.0, 0.0))):
        raise _no_overlap_error(moving, fixed, "their bounding boxes do not intersect after initialisation")

    # Coarse search over rotations about the centre (as FLIRT does), scored at the coarsest level.
    scored: list[tuple[float, tuple[float, float, float]]] = []
    for angles in _search_rotations(settings):
        try:
            value = _evaluate(levels, 0, _euler_from(center, translation, angles), settings, seed)
        except RuntimeError as exc:
            if _is_overlap_failure(exc):
                continue
            raise
        scored.append((value, angles))
    if not scored:
        raise _no_overlap_error(moving, fixed, "no metric sample of the fixed image falls inside the moving image")
    scored.sort(key=lambda item: (item[0], sum(abs(a) for a in item[1])))
    keep = [angles for _, angles in scored[: settings.search_keep]]
    if (0.0, 0.0, 0.0) not in keep:
        keep.append((0.0, 0.0, 0.0))
    # Optimise the best few at the coarsest level; keep the best optimum, and among optima within
    # 0.5 % of it the one with the smallest rotation.
    best: tuple[float, float, sitk.Euler3DTransform, tuple[float, float, float]] | None = None
    for angles in keep:
        try:
            candidate, value, _ = _run_level(
                levels, 0, _euler_from(center, translation, angles), settings, seed, levels.spacing[0]
            )
        except RuntimeError as exc:
            if _is_overlap_failure(exc):
                continue
            raise
        size = float(np.linalg.norm(candidate.GetParameters()[:3]))
        tolerance = 0.005 * abs(best[0]) if best is not None else 0.0
        if best is None or value < best[0] - tolerance or (value <= best[0] + tolerance and size < best[1]):
            best = (value, size, candidate, angles)
    if best is None:
        raise _no_overlap_error(moving, fixed, "no metric sample of the fixed image falls inside the moving image")
    metric, _, transform, start = best
    details["search_candidates"] = len(scored)
    details["search_start_deg"] = list(start)
    stops = []
    for index in range(1, len(levels.fixed)):
        transform, metric, stop = _run_level(levels, index, transform, settings, seed, levels.spacing[index])
        stops.append(stop)
    if dof == 12:
        finest = len(levels.fixed) - 1
        rigid_metric = _evaluate(levels, finest, transform, settings, seed)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(transform.GetCenter())
        affine.SetMatrix(transform.GetMatrix())
        affine.SetTranslation(transform.GetTranslation())
        for index in range(max(0, len(levels.fixed) - settings.affine_levels), len(levels.fixed)):
            step = settings.affine_step_fraction * levels.spacing[index]
            affine, _, stop = _run_level(levels, index, affine, settings, seed, step)
            stops.append(stop)
        affine_metric = _evaluate(levels, finest, affine, settings, seed)
        # The affine stage starts from the rigid optimum; keep it only if it improves the metric.
        details["affine_accepted"] = bool(affine_metric < rigid_metric)
        if affine_metric < rigid_metric:
            transform, metric = affine, affine_metric
        else:
            metric = rigid_metric
            log.info("the affine stage did not improve on the rigid result for %s; keeping the rigid one", moving.name)
    details["stop_conditions"] = stops
    return levels.to_mm(sitk_transform_to_matrix(transform)), metric, details


# --------------------------------------------------------------------------------------------------
# FSL FLIRT through fslpy


def _write_for_fsl(volume: Volume, path: Path) -> Path:
    image = nib.Nifti1Image(volume.data.astype(np.float32), volume.affine)
    image.set_sform(volume.affine, 1)
    image.set_qform(volume.affine, 1)
    nib.save(image, str(path))
    return path


def _register_flirt(moving: Volume, fixed: Volume, dof: int, work_dir: Path) -> tuple[np.ndarray, Path, dict[str, Any]]:
    try:
        from fsl.utils.run import FSLNotPresent
        from fsl.wrappers import flirt
    except ImportError as exc:  # pragma: no cover - fslpy is a dependency
        raise RuntimeFailure("fslpy is not installed, so FLIRT cannot be run", "pip install fslpy") from exc
    src = _write_for_fsl(moving, work_dir / "moving.nii.gz")
    ref = _write_for_fsl(fixed, work_dir / "fixed.nii.gz")
    omat = work_dir / "moving_to_fixed.mat"
    out = work_dir / "moving_in_fixed.nii.gz"
    names = f"{moving.name} -> {fixed.name}"
    try:
        with fsl_output_type("NIFTI_GZ"):
            outputs = flirt(
                str(src),
                str(ref),
                out=str(out),
                omat=str(omat),
                dof=dof,
                cost="corratio",
                interp="trilinear",
                exitcode=True,
                silent=True,
            )
        # fslpy returns a Results dict whose .stdout is the runner's (stdout, stderr, exit code).
        _, stderr, code = outputs.stdout
    except FSLNotPresent as exc:
        raise RuntimeFailure(
            f"FLIRT was requested for {names} but FSL is not set up ({exc})",
            "set FSLDIR to your FSL installation, or use --registration sitk",
        ) from exc
    except (FileNotFoundError, PermissionError) as exc:
        raise RuntimeFailure(
            f"FLIRT could not be started for {names} ({exc})", "check $FSLDIR/bin/flirt, or use --registration sitk"
        ) from exc
    except (subprocess.CalledProcessError, RuntimeError, AssertionError) as exc:
        raise RuntimeFailure(
            f"FLIRT failed for {names} ({str(exc).splitlines()[0][:160]})",
            "check the inputs, or use --registration sitk",
        ) from exc
    if code != 0:
        last = next((line for line in reversed(str(stderr or "").splitlines()) if line.strip()), "no message")
        raise RuntimeFailure(
            f"FLIRT failed for {names} (exit code {code}: {last[:160]})",
            "check the inputs and FSL, or use --registration sitk",
        )
    try:
        matrix = np.loadtxt(omat, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(
            f"FLIRT did not write a readable matrix for {names} ({omat})",
            "check the FSL installation, or use --registration sitk",
        ) from exc
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise RuntimeFailure(f"FLIRT wrote an invalid matrix {omat} for {names}", "use --registration sitk")
    details = {
        "flirt": str(find_fsl_tool("flirt")),
        "omat": str(omat),
        "cost": "corratio",
        "flirt_matrix": matrix.tolist(),
    }
    return flirt_to_world(matrix, Grid.of(moving), Grid.of(fixed)), out, details


def _load_flirt_output(out: Path, fixed: Volume, moving: Volume) -> Volume | None:
    if not out.is_file():
        return None
    try:
        image = nib.load(str(out))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception:  # noqa: BLE001 - any unreadable output: resample ourselves instead
        log.warning("could not read FLIRT's output %s; resampling with its matrix instead", out)
        return None
    if data.shape != fixed.shape or not np.allclose(image.affine, fixed.affine, atol=1e-3):
        return None
    return Volume(np.ascontiguousarray(data), fixed.affine.copy(), fixed.header.copy(), moving.path, moving.contrast)


# --------------------------------------------------------------------------------------------------
# Entry point


def _final_metric(moving: Volume, fixed: Volume, transform: np.ndarray, seed: int) -> float:
    """The embedded method's finest-level metric at ``transform`` (to compare backends)."""
    default = SitkSettings()
    settings = SitkSettings(level_mm=default.level_mm[-1:], samples=default.samples[-1:], iterations=(1,))
    with _itk_threads(settings.threads):
        levels = _Levels(moving, fixed, settings)
        try:
            return _evaluate(levels, 0, matrix_to_sitk_transform(levels.from_mm(transform)), settings, seed)
        except RuntimeError:
            return float("nan")


def register(
    moving: Volume,
    fixed: Volume,
    *,
    method: str = "auto",
    dof: int = 6,
    work_dir: Path | None = None,
    seed: int = 0,
    init: str = "moments",
    settings: SitkSettings | None = None,
    fixed_mask: np.ndarray | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` and resample it onto the fixed grid.

    Args:
        moving: the image to align.
        fixed: the reference image; the result lies on its grid.
        method: ``"auto"`` (FLIRT when FSL provides ``flirt``, else SimpleITK), ``"fsl"``, ``"sitk"``, or
            ``"none"`` (the images must already share one grid; the identity is returned).
        dof: 6 (rigid, default) or 12 (affine).
        work_dir: where FLIRT's files (inputs, ``.mat``, output) are written and kept; a temporary
            folder, deleted afterwards, when ``None``.
        seed: seed of the metric's random sampling (SimpleITK); the same seed gives the same result.
        init: SimpleITK start: ``"moments"`` (align centres of mass, default), ``"geometry"`` (align
            image centres) or ``"header"`` (trust the headers' positions).
        settings: SimpleITK settings (defaults: :class:`SitkSettings`).

    Returns:
        The :class:`RegistrationResult` (transform fixed → moving in RAS mm, resampled image, ...).

    Raises:
        InputError: unknown method/dof, or images that do not overlap.
        GeometryError: ``method="none"`` with images on different grids (each grid is listed).
        RuntimeFailure: FLIRT was asked for but is missing or failed.
    """
    if method not in REGISTRATION_METHODS:
        raise InputError(f"unknown registration method {method!r} for {moving.name}", "choose auto, fsl, sitk or none")
    if method == "none":
        check_same_grid(
            [fixed, moving],
            hint="with --registration none every input must be on one grid; use --registration auto to align them",
        )
        resampled = Volume(moving.data, fixed.affine.copy(), fixed.header.copy(), moving.path, moving.contrast)
        return RegistrationResult("none", np.eye(4), resampled, float("nan"), 0.0, dof, Grid.of(moving), Grid.of(fixed))
    if dof not in (6, 12):
        raise InputError(f"cannot register {moving.name} with {dof} degrees of freedom", "use 6 (rigid) or 12 (affine)")
    if init not in ("moments", "geometry", "header"):
        raise InputError(f"unknown initialisation {init!r} for {moving.name}", "use moments, geometry or header")
    backend = "sitk"
    if method == "fsl" or (method == "auto" and find_fsl_tool("flirt") is not None):
        backend = "fsl-flirt"
    start = time.perf_counter()
    if backend == "fsl-flirt":
        with contextlib.ExitStack() as stack:
            if work_dir is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mrsynth-flirt-")))
            else:
                folder = Path(work_dir)
                folder.mkdir(parents=True, exist_ok=True)
            transform, out, details = _register_flirt(moving, fixed, dof, folder)
            resampled = _load_flirt_output(out, fixed, moving)
            details["resampled_by"] = "flirt" if resampled is not None else "sitk (FLIRT's matrix)"
        if resampled is None:
            resampled = resample_to_reference(moving, fixed, transform)
        metric = _final_metric(moving, fixed, transform, seed)
    else:
        settings = settings or SitkSettings()
        try:
            with _itk_threads(settings.threads):
                transform, metric, details = _register_sitk(moving, fixed, dof, seed, settings, init, fixed_mask)
        except RuntimeError as exc:
            if _is_overlap_failure(exc):
                raise _no_overlap_error(moving, fixed, "too few metric samples overlap") from exc
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise RuntimeFailure(
                f"SimpleITK registration of {moving.name} to {fixed.name} failed ({first[-160:]})",
                "check both images, or try --registration fsl",
            ) from exc
        resampled = resample_to_reference(moving, fixed, transform)
    seconds = time.perf_counter() - start
    if dof == 6 and not _is_rigid(transform, tol=1e-4):
        log.warning("the rigid registration of %s returned a non-rigid matrix", moving.name)
    log.info("registered %s to %s with %s in %.1f s (metric %.4f)", moving.name, fixed.name, backend, seconds, metric)
    return RegistrationResult(
        backend=backend,
        transform=transform,
        resampled=resampled,
        metric=metric,
        seconds=seconds,
        dof=dof,
        moving=Grid.of(moving),
        fixed=Grid.of(fixed),
        details=details,
    )


def apply_transform_file(moving: Volume, fixed: Volume, path: str | Path, *, seed: int = 0) -> RegistrationResult:
    """Use a transform the user already has instead of registering (``--transform CONTRAST=FILE``).

    ITK files (ANTs, SimpleITK, Slicer, mrsynth's own ``.tfm``) map fixed points to moving points;
    FSL ``.mat`` files are read in FLIRT's convention with ``moving`` as ``-in`` and ``fixed`` as
    ``-ref``. The result is recorded like a registration (backend ``"given"``), so it is undone the
    same way.

    Raises:
        InputError: the file is missing, unreadable or non-linear, or it puts the image outside the
            reference (nothing overlaps).
    """
    start = time.perf_counter()
    transform = load_transform(path, moving=moving, fixed=fixed)
    resampled = resample_to_reference(moving, fixed, transform)
    if not np.any(resampled.data):
        raise _no_overlap_error(moving, fixed, f"the transform {Path(path).name} maps it outside the reference")
    metric = _final_metric(moving, fixed, transform, seed)
    return RegistrationResult(
        backend="given",
        transform=transform,
        resampled=resampled,
        metric=metric,
        seconds=time.perf_counter() - start,
        dof=6 if _is_rigid(transform, tol=1e-4) else 12,
        moving=Grid.of(moving),
        fixed=Grid.of(fixed),
        details={"transform_file": str(path)},
    )
