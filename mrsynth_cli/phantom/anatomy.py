"""Subject anatomy: the packaged MNI ICBM152 2009a tissue maps, warped per subject, plus head layers.

The packaged maps (``data/``, see its README) give GM, WM and CSF probabilities on a 1.5 mm grid in
MNI space. A subject is made by a random spatial transform ``phi`` from the subject's (output) space
to MNI space,

    phi(y) = L (y + u(y)) + c,

with ``u`` a smooth, diffeomorphic displacement (a stationary velocity field integrated by scaling
and squaring), ``L`` the inverse of a small rotation times an anisotropic scaling (+-8 %) and ``c``
the head centre in MNI space (plus a small shift). Each output voxel samples the tissue maps at
``phi(y)`` by trilinear interpolation (scipy.ndimage.map_coordinates), so tissue fractions carry
the partial volume of both the template and the resampling.

Around the brain, a smooth intracranial hull (the brain's support closed over the sulci) carries a
layer of subarachnoid CSF, a thin dura, and (with ``skull=True``) the skull (inner table, fatty
diploe, outer table) and the scalp (galea/temporalis muscle, subcutaneous fat, skin), all as soft
partial-volume shells at signed distances from the hull, with smoothly varying thickness.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrsynth_cli.phantom.tissues import Tissue

__all__ = [
    "Atlas",
    "Grid",
    "SubjectTransform",
    "load_atlas",
    "make_grid",
    "random_transform",
    "template_coordinates",
    "template_box_to_slices",
    "soft_inside",
    "smooth_random_field",
    "head_fractions",
    "draw_choroid_plexus",
    "FOV_MM",
    "HEAD_CENTRE_MNI",
]

#: Field of view of the simulated volumes (mm, x y z), enough for a head scaled by +8 %.
FOV_MM = (192.0, 224.0, 176.0)
#: MNI coordinates of the point placed at the centre of the field of view.
HEAD_CENTRE_MNI = (0.0, -17.0, 12.0)
#: Packaged tissue maps (uint8 probabilities x 255) on a 1.5 mm MNI grid.
ATLAS_FILES = {
    "gm": "icbm152_2009a_sym_gm_1p5mm.nii.gz",
    "wm": "icbm152_2009a_sym_wm_1p5mm.nii.gz",
    "csf": "icbm152_2009a_sym_csf_1p5mm.nii.gz",
}


# --------------------------------------------------------------------------------------------------
# Template


@dataclass(frozen=True)
class Atlas:
    """Template-space maps on the packaged grid (MNI mm, RAS, isotropic ``spacing``).

    Attributes:
        gm, wm, csf: tissue probabilities in [0, 1] (their sum is the brain's support).
        hull_distance: signed distance (mm) to the smooth intracranial hull, negative inside.
        ventricles: lateral/third ventricle mask (bool).
        ventricle_distance: distance (mm) to the nearest ventricle voxel.
        origin: MNI coordinates of voxel (0, 0, 0).
        spacing: voxel size (mm).
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    hull_distance: np.ndarray
    ventricles: np.ndarray
    ventricle_distance: np.ndarray
    origin: np.ndarray
    spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.gm.shape)  # type: ignore[return-value]

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """MNI mm (..., 3) -> continuous voxel indices (..., 3)."""
        return (np.asarray(points_mm, dtype=np.float64) - self.origin) / self.spacing

    def voxel_centres(self, mask: np.ndarray) -> np.ndarray:
        """MNI mm (N, 3) of the voxels in ``mask``."""
        return np.argwhere(mask).astype(np.float64) * self.spacing + self.origin

    def sample_nearest(self, volume: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
        """Nearest-voxel values of a template volume at MNI points (N, 3) (clamped at the border)."""
        index = np.rint(self.to_index(points_mm)).astype(np.int64)
        index = np.clip(index, 0, np.array(volume.shape) - 1)
        return volume[index[:, 0], index[:, 1], index[:, 2]]


def _load_map(name: str) -> tuple[np.ndarray, np.ndarray]:
    ref = resources.files("mrsynth_cli.phantom").joinpath("data", name)
    with resources.as_file(ref) as path:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        return data, np.asarray(image.affine, dtype=np.float64)


def _ball_close(mask: np.ndarray, radius_vox: float) -> np.ndarray:
    """Morphological closing with a ball, by two Euclidean distance transforms (fast for large radii)."""
    pad = int(math.ceil(radius_vox)) + 2
    padded = np.pad(mask, pad)
    dilated = ndimage.distance_transform_edt(~padded) <= radius_vox
    closed = ndimage.distance_transform_edt(dilated) > radius_vox
    return closed[pad:-pad, pad:-pad, pad:-pad]


def _hull_distance(brain: np.ndarray, spacing: float) -> np.ndarray:
    """Signed distance (mm, negative inside) to a smooth intracranial hull around ``brain``.

    The hull is the brain closed over its sulci (ball of 6 mm), holes filled and smoothed, so that
    the skull does not follow the gyri; its surface lies ~1-2 mm outside the cortex. It is built on
    a grid twice as coarse (max-pooled, so it still contains the whole brain) and its distance map
    linearly interpolated back, which is 8x faster and accurate for a smooth surface.
    """
    pad = [(0, (-n) % 2) for n in brain.shape]
    padded = np.pad(brain, pad)
    coarse = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).max(
        axis=(1, 3, 5)
    )
    step = 2 * spacing
    closed = ndimage.binary_fill_holes(_ball_close(coarse, 6.0 / step) | coarse)
    smooth = ndimage.gaussian_filter(closed.astype(np.float32), 2.0 / step)
    hull = (smooth > 0.35) | closed
    inside = ndimage.distance_transform_edt(hull) * step
    outside = ndimage.distance_transform_edt(~hull) * step
    distance = np.where(hull, -inside + 0.5 * step, outside - 0.5 * step).astype(np.float32)
    # Coarse voxel k covers fine voxels 2k, 2k+1: its centre is at fine index 2k + 0.5.
    coords = np.meshgrid(*[(np.arange(n) - 0.5) / 2.0 for n in brain.shape], indexing="ij")
    return ndimage.map_coordinates(distance, coords, order=1, mode="nearest", output=np.float32)


@functools.lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """Load the packaged maps and derive the intracranial hull and the ventricles (cached)."""
    gm, affine = _load_map(ATLAS_FILES["gm"])
    wm, _ = _load_map(ATLAS_FILES["wm"])
    csf, _ = _load_map(ATLAS_FILES["csf"])
    spacing = float(affine[0, 0])
    origin = affine[:3, 3].copy()
    support = gm + wm + csf
    hull_distance = _hull_distance(support > 0.5, spacing)
    # Ventricles: CSF-dominated voxels deep inside the hull, in a box around the lateral and third
    # ventricles; the (up to three) largest connected parts. Distances are computed in that box only.
    lo = np.floor((np.array([-50.0, -65.0, -25.0]) - origin) / spacing).astype(int).clip(0)
    hi = np.ceil((np.array([50.0, 50.0, 55.0]) - origin) / spacing).astype(int).clip(None, np.array(gm.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    centres = np.stack(
        np.meshgrid(
            *[(np.arange(s.start, s.stop) * spacing + o) for s, o in zip(box, origin, strict=True)], indexing="ij"
        )
    )
    inner = (np.abs(centres[0]) < 35) & (centres[1] > -50) & (centres[1] < 35) & (centres[2] > -10) & (centres[2] < 40)
    candidates = (csf[box] > 0.5) & (hull_distance[box] < -12) & inner
    labels, count = ndimage.label(candidates)
    sizes = ndimage.sum(candidates, labels, range(1, count + 1)) if count else np.zeros(0)
    keep = 1 + np.argsort(sizes)[::-1][:3]
    keep = keep[sizes[keep - 1] > 50]
    ventricles = np.zeros(gm.shape, dtype=bool)
    ventricles[box] = np.isin(labels, keep)
    ventricle_distance = np.full(gm.shape, 99.0, dtype=np.float32)
    ventricle_distance[box] = np.minimum(ndimage.distance_transform_edt(~ventricles[box]) * spacing, 99.0)
    for array in (gm, wm, csf, hull_distance, ventricles, ventricle_distance):
        array.setflags(write=False)
    return Atlas(gm, wm, csf, hull_distance, ventricles, ventricle_distance, origin, spacing)


# --------------------------------------------------------------------------------------------------
# Output grid


@dataclass(frozen=True)
class Grid:
    """The output voxel grid: RAS, isotropic, centred on world (0, 0, 0)."""

    shape: tuple[int, int, int]
    spacing: float
    affine: np.ndarray

    def axes(self) -> list[np.ndarray]:
        """World coordinates (mm) of the voxel centres along each axis."""
        return [np.arange(n, dtype=np.float64) * self.spacing + self.affine[i, 3] for i, n in enumerate(self.shape)]

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(points_mm, dtype=np.float64) - self.affine[:3, 3]) / self.spacing


def make_grid(resolution_mm: float) -> Grid:
    """The output grid at ``resolution_mm`` covering :data:`FOV_MM`, centred on the world origin."""
    shape = tuple(max(8, int(round(f / resolution_mm))) for f in FOV_MM)
    affine = np.eye(4)
    affine[:3, :3] *= resolution_mm
    affine[:3, 3] = -(np.array(shape, dtype=np.float64) - 1.0) / 2.0 * resolution_mm
    return Grid(shape, float(resolution_mm), affine)  # type: ignore[arg-type]


def _interp_matrix(positions: np.ndarray, n_coarse: int, order: int = 3) -> np.ndarray:
    """Matrix W (len(positions), n_coarse) with W @ c = spline interpolation of samples c at ``positions``.

    ``positions`` are in coarse-sample units. Built column by column from interpolating unit vectors
    (the interpolation is linear in the data), so a tensor product of three such matrices upsamples
    a coarse 3D field onto a regular grid without evaluating a 3D spline at every voxel.
    """
    eye = np.eye(n_coarse)
    coords = positions[None, :]
    return np.stack(
        [ndimage.map_coordinates(eye[j], coords, order=order, mode="nearest") for j in range(n_coarse)], axis=1
    )


def upsample_separable(coarse: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Apply per-axis interpolation matrices to a coarse 3D field -> float32 fine field."""
    wx, wy, wz = (m.astype(np.float32) for m in matrices)
    c = coarse.astype(np.float32)
    t = np.einsum("ia,abc->ibc", wx, c)
    t = np.einsum("jb,ibc->ijc", wy, t)
    nx, ny, cz = t.shape
    return (t.reshape(nx * ny, cz) @ wz.T).reshape(nx, ny, wz.shape[0])


@dataclass(frozen=True)
class CoarseGrid:
    """A coarse regular grid in subject space on which smooth random fields live."""

    origin: np.ndarray  # world mm of sample (0, 0, 0)
    spacing: float
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, spacing: float, margin_cells: int = 2) -> CoarseGrid:
        half = np.array(FOV_MM) / 2.0 + margin_cells * spacing
        shape = tuple(int(math.ceil(2 * h / spacing)) + 1 for h in half)
        return cls(-half, spacing, shape)  # type: ignore[arg-type]

    def index(self, points_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(points_mm, dtype=np.float64) - self.origin) / self.spacing

    def matrices(self, grid: Grid, order: int = 3) -> list[np.ndarray]:
        return [
            _interp_matrix((axis - self.origin[i]) / self.spacing, self.shape[i], order)
            for i, axis in enumerate(grid.axes())
        ]


def smooth_random_field(rng: np.random.Generator, coarse: CoarseGrid, smoothing_cells: float = 1.0) -> np.ndarray:
    """A smooth zero-mean field on ``coarse`` scaled to max |value| = 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(coarse.shape), smoothing_cells, mode="nearest")
    field -= field.mean()
    return field / max(float(np.abs(field).max()), 1e-12)


# --------------------------------------------------------------------------------------------------
# Spatial transform


def _integrate_velocity(velocity: np.ndarray, spacing: float, steps: int = 6) -> np.ndarray:
    """Displacement (mm) of exp(velocity) by scaling and squaring on a coarse grid (3, X, Y, Z)."""
    disp = velocity / (2.0**steps)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in velocity.shape[1:]], indexing="ij"))
    for _ in range(steps):
        coords = grid + disp / spacing
        warped = np.stack([ndimage.map_coordinates(disp[i], coords, order=1, mode="nearest") for i in range(3)])
        disp = disp + warped
    return disp


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    rx, ry, rz = angles_rad
    cx, cy, cz, sx, sy, sz = np.cos(rx), np.cos(ry), np.cos(rz), np.sin(rx), np.sin(ry), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


@dataclass(frozen=True)
class SubjectTransform:
    """phi(y) = linear @ (y + u(y)) + offset, from subject mm to MNI mm, and its inverse.

    ``forward``/``inverse`` are displacement fields (mm, subject space) on ``coarse``: exp(v) and
    exp(-v) of one stationary velocity field, so each inverts the other up to interpolation error.
    """

    linear: np.ndarray
    offset: np.ndarray
    coarse: CoarseGrid
    forward: np.ndarray
    inverse: np.ndarray
    scales: np.ndarray
    angles_deg: np.ndarray

    @property
    def mean_scale(self) -> float:
        """Mean linear size of the subject head relative to the template."""
        return float(np.prod(self.scales) ** (1.0 / 3.0))

    def _displace(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        idx = self.coarse.index(points).T
        return np.stack([ndimage.map_coordinates(field[i], idx, order=1, mode="nearest") for i in range(3)], axis=1)

    def to_template(self, points_subject: np.ndarray) -> np.ndarray:
        """Subject mm (N, 3) -> MNI mm (N, 3)."""
        p = np.atleast_2d(np.asarray(points_subject, dtype=np.float64))
        return (p + self._displace(self.forward, p)) @ self.linear.T + self.offset

    def to_subject(self, points_template: np.ndarray) -> np.ndarray:
        """MNI mm (N, 3) -> subject mm (N, 3)."""
        x = np.atleast_2d(np.asarray(points_template, dtype=np.float64))
        z = (x - self.offset) @ np.linalg.inv(self.linear).T
        return z + self._displace(self.inverse, z)


def random_transform(
    rng: np.random.Generator,
    scale_range: float = 0.08,
    rotation_deg: float = 5.0,
    shift_mm: float = 3.0,
    warp_rms_mm: tuple[float, float] = (1.0, 2.0),
    warp_spacing_mm: float = 12.0,
) -> SubjectTransform:
    """A random subject: anisotropic scale (+-``scale_range``), small rotation, shift and smooth warp."""
    global_scale = rng.uniform(1 - 0.6 * scale_range, 1 + 0.6 * scale_range)
    scales = np.clip(
        global_scale * rng.uniform(1 - 0.4 * scale_range, 1 + 0.4 * scale_range, 3), 1 - scale_range, 1 + scale_range
    )
    angles = rng.uniform(-rotation_deg, rotation_deg, 3)
    shift = rng.uniform(-shift_mm, shift_mm, 3)
    rot = _rotation(np.radians(angles))
    linear = np.diag(1.0 / scales) @ rot.T  # inverse of (rot @ diag(scales))
    offset = np.array(HEAD_CENTRE_MNI) + shift
    coarse = CoarseGrid.covering(warp_spacing_mm)
    velocity = np.stack([smooth_random_field(rng, coarse, 1.0) for _ in range(3)])
    rms = float(np.sqrt((velocity**2).sum(0).mean()))
    velocity *= rng.uniform(*warp_rms_mm) / max(rms, 1e-12)
    forward = _integrate_velocity(velocity, coarse.spacing)
    inverse = _integrate_velocity(-velocity, coarse.spacing)
    return SubjectTransform(linear, offset, coarse, forward, inverse, scales, angles)


def template_coordinates(transform: SubjectTransform, grid: Grid) -> np.ndarray:
    """MNI mm of every output voxel centre: float32 array (3, X, Y, Z)."""
    matrices = transform.coarse.matrices(grid)
    axes = [a.astype(np.float32) for a in grid.axes()]
    shape = grid.shape
    moved = []  # y + u(y), one component at a time
    for i in range(3):
        comp = upsample_separable(transform.forward[i], matrices)
        comp += axes[i].reshape([-1 if j == i else 1 for j in range(3)])
        moved.append(comp)
    out = np.empty((3, *shape), dtype=np.float32)
    lin = transform.linear.astype(np.float32)
    for a in range(3):
        np.multiply(moved[0], lin[a, 0], out=out[a])
        out[a] += lin[a, 1] * moved[1]
        out[a] += lin[a, 2] * moved[2]
        out[a] += np.float32(transform.offset[a])
    return out


def template_box_to_slices(
    transform: SubjectTransform, grid: Grid, centre_mm: np.ndarray, half_size_mm: float
) -> tuple[slice, slice, slice] | None:
    """Output-grid slices covering a template-space cube (centre +- half size), or None if outside."""
    corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * 3, indexing="ij")).reshape(3, -1).T
    points = np.asarray(centre_mm, dtype=np.float64) + corners * half_size_mm
    idx = grid.to_index(transform.to_subject(points))
    lo = np.floor(idx.min(0)).astype(int) - 2
    hi = np.ceil(idx.max(0)).astype(int) + 3
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(grid.shape))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Fractions


def soft_inside(signed_distance: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel inside a surface from the signed distance of its centre.

    A planar surface crossing a voxel of edge ``voxel_mm`` leaves ``clip(0.5 - d / voxel, 0, 1)`` of
    it inside (d < 0 inside). Returns float32.
    """
    out = np.asarray(signed_distance, dtype=np.float32) * np.float32(-1.0 / voxel_mm)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass
class HeadLayers:
    """Thicknesses (template mm) of the shells outside the intracranial hull."""

    inner_table: float
    diploe: float
    outer_table: float
    galea: float
    temporalis: float
    fat: float
    skin: float
    dura: float
    extra_csf: float
    diploe_fat: float


def random_layers(rng: np.random.Generator) -> HeadLayers:
    """Per-subject layer thicknesses (typical adult values, mm; skull ~5-8 mm, scalp ~5-8 mm)."""
    return HeadLayers(
        inner_table=rng.uniform(1.2, 1.8),
        diploe=rng.uniform(2.0, 3.5),
        outer_table=rng.uniform(1.3, 2.0),
        galea=rng.uniform(0.8, 1.5),
        temporalis=rng.uniform(5.0, 9.0),
        fat=rng.uniform(2.5, 5.0),
        skin=rng.uniform(1.5, 2.2),
        dura=rng.uniform(0.7, 1.0),
        extra_csf=rng.uniform(0.0, 1.5),
        diploe_fat=rng.uniform(0.5, 0.75),
    )


def _temporalis_weight(x: np.ndarray) -> np.ndarray:
    """0..1 weight of the temporal fossa (lateral, above the zygoma) from MNI coordinates (3, ...)."""
    lateral = 1.0 / (1.0 + np.exp(-(np.abs(x[0]) - 40.0) / 6.0))
    vertical = np.exp(-(((x[2] - 0.0) / 28.0) ** 2))
    sagittal = np.exp(-(((x[1] + 5.0) / 40.0) ** 2))
    return (lateral * vertical * sagittal).astype(np.float32)


def head_fractions(
    atlas: Atlas,
    x_mm: np.ndarray,
    sample_index: np.ndarray,
    voxel_mm: float,
    layers: HeadLayers,
    thickness_field: np.ndarray,
    skull: bool,
) -> tuple[dict[Tissue, np.ndarray], np.ndarray]:
    """Tissue fractions of the normal head on the output grid.

    Args:
        atlas: the template.
        x_mm: MNI coordinates of the voxels (3, X, Y, Z), for the position-dependent layers.
        sample_index: template voxel indices at which to sample the tissue maps (3, X, Y, Z); equal
            to ``atlas.to_index(x_mm)`` except where a tumour's mass effect displaces tissue.
        voxel_mm: output voxel size expressed in template mm (resolution / subject scale).
        layers: shell thicknesses.
        thickness_field: multiplicative skull/scalp thickness variation (X, Y, Z), around 1.
        skull: simulate dura, skull and scalp (else only the intracranial content).

    Returns:
        (fractions per tissue, brain support in [0, 1] for the brain mask).
    """

    distance = ndimage.map_coordinates(atlas.hull_distance, sample_index, order=1, mode="nearest", output=np.float32)
    distance -= np.float32(layers.extra_csf)  # a wider subarachnoid space moves the hull outwards
    # The brain maps are zero outside the hull: sample them only inside it (a quarter of the grid).
    inside = np.flatnonzero(distance < np.float32(voxel_mm + 1.0))
    coords = sample_index.reshape(3, -1)[:, inside]

    def sample(volume: np.ndarray, where: np.ndarray, at: np.ndarray) -> np.ndarray:
        out = np.zeros(distance.shape, dtype=np.float32)
        out.reshape(-1)[where] = ndimage.map_coordinates(volume, at, order=1, mode="nearest", output=np.float32)
        return out

    gm = sample(atlas.gm, inside, coords)
    wm = sample(atlas.wm, inside, coords)
    csf = sample(atlas.csf, inside, coords)
    del coords, inside
    support = gm + wm + csf
    icv = soft_inside(distance, voxel_mm)
    # Brain tissue cannot exceed the intracranial fraction; the rest of the hull is CSF.
    over = support > icv
    if over.any():
        scale = np.where(over, icv / np.maximum(support, 1e-6), 1.0).astype(np.float32)
        gm *= scale
        wm *= scale
        csf *= scale
    csf += np.clip(icv - (gm + wm + csf), 0.0, 1.0)
    fractions: dict[Tissue, np.ndarray] = {Tissue.CSF: csf, Tissue.GM: gm, Tissue.WM: wm}
    if not skull:
        return fractions, support

    # Dura: a thin band just inside the hull, taken from the CSF there.
    dura = icv - soft_inside(distance + np.float32(layers.dura), voxel_mm)
    np.minimum(dura, csf, out=dura)
    csf -= dura
    fractions[Tissue.DURA] = dura

    # Shells outside the hull at increasing distance; thickness varies smoothly over the head.
    t = thickness_field
    temporalis = _temporalis_weight(x_mm)
    bounds = []
    edge = np.zeros_like(distance)
    for thickness in (
        layers.inner_table * t,
        layers.diploe * t,
        layers.outer_table * t,
        layers.galea + layers.temporalis * temporalis,
        layers.fat * t,
        layers.skin,
    ):
        edge = edge + thickness
        bounds.append(edge)
    inside_prev = icv
    shells = []
    for bound in bounds:
        inside = soft_inside(distance - bound, voxel_mm)
        shells.append(inside - inside_prev)
        inside_prev = inside
    inner, diploe, outer, muscle, fat, skin = shells
    bone = inner + outer + diploe * np.float32(1.0 - layers.diploe_fat)
    fat = fat + diploe * np.float32(layers.diploe_fat)
    muscle = muscle + skin
    # Below the posterior fossa and the temporal lobes the head continues as skull base and neck:
    # fill what the shells leave empty there with muscle and some fat.
    neck = _neck_weight(x_mm, voxel_mm)
    empty = np.clip(1.0 - (icv + inner + diploe + outer + shells[3] + shells[4] + skin), 0.0, 1.0)
    neck *= empty
    muscle += np.float32(0.85) * neck
    fat += np.float32(0.15) * neck
    fractions[Tissue.BONE] = bone
    fractions[Tissue.FAT] = fat
    fractions[Tissue.MUSCLE] = muscle
    return fractions, support


def _neck_weight(x: np.ndarray, voxel_mm: float) -> np.ndarray:
    """0..1 occupancy of the skull base and neck: an elliptic column (MNI mm) below z = -30."""
    radial = np.sqrt((x[0] / 58.0) ** 2 + ((x[1] + 22.0) / 62.0) ** 2)
    inside = soft_inside((radial - 1.0) * 58.0, voxel_mm)
    below = soft_inside(x[2] + 38.0, 8.0)  # fades in over 8 mm around z = -38
    return (inside * below).astype(np.float32)


#: Choroid plexus of each lateral ventricle (right side; mirrored for the left): a strand along the
#: floor of the ventricular body ending in the glomus in the atrium (MNI mm, radius mm).
CHOROID_PATH_MNI = ((12.0, -12.0, 20.0, 1.8), (18.0, -28.0, 19.0, 2.2), (24.0, -40.0, 14.0, 4.0))


def _capsule_distance(x: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Signed distance of points (3, ...) to a tapered capsule from a (radius ra) to b (radius rb)."""
    shape = (3,) + (1,) * (x.ndim - 1)
    ab = (b - a).reshape(shape).astype(np.float32)
    ap = x - a.reshape(shape).astype(np.float32)
    t = np.clip((ap * ab).sum(0) / np.float32((b - a) @ (b - a)), 0.0, 1.0)
    closest = ap - ab * t
    return np.sqrt((closest**2).sum(0)) - (ra + (rb - ra) * t)


def draw_choroid_plexus(
    fractions: dict[Tissue, np.ndarray],
    x_mm: np.ndarray,
    voxel_mm: float,
    transform: SubjectTransform,
    grid: Grid,
    rng: np.random.Generator,
) -> None:
    """Put choroid plexus into the CSF of the lateral ventricles (taken from the CSF fraction)."""
    csf = fractions[Tissue.CSF]
    out = fractions.setdefault(Tissue.CHOROID_PLEXUS, np.zeros_like(csf))
    for side in (1.0, -1.0):
        path = np.array(CHOROID_PATH_MNI)
        points = path[:, :3] * np.array([side, 1.0, 1.0]) + rng.uniform(-1.0, 1.0, (len(path), 3))
        radii = path[:, 3] * rng.uniform(0.85, 1.15)
        centre = points.mean(0)
        half = float(np.abs(points - centre).max() + radii.max() + 2.0)
        slices = template_box_to_slices(transform, grid, centre, half)
        if slices is None:
            continue
        x = x_mm[(slice(None), *slices)]
        distance = np.full(x.shape[1:], np.inf, dtype=np.float32)
        for i in range(len(points) - 1):
            d = _capsule_distance(x, points[i], points[i + 1], radii[i], radii[i + 1])
            np.minimum(distance, d, out=distance)
        share = soft_inside(distance, voxel_mm) * csf[slices]
        csf[slices] -= share
        out[slices] += share
