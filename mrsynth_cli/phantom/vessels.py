"""The cerebral arterial tree: main trunks around the circle of Willis plus random branching trees.

Trunks follow approximate MNI landmarks (jittered per subject, made tortuous by a spline through
randomly displaced control points): internal carotids (ICA) and vertebral arteries entering from
below, the basilar artery, the circle of Willis (A1, anterior and posterior communicating
arteries), the middle (M1), anterior (A2/pericallosal) and posterior (P1-P3) cerebral arteries and
the superior and posterior-inferior cerebellar arteries, plus lenticulostriate perforators.

From the ends of the cerebral trunks, random trees grow towards their vascular territories
(points on the cortex of the MCA, ACA, PCA and cerebellar territories): each branch walks in
0.5 mm steps towards a target with random tortuosity, kept inside the intracranial hull, and
bifurcates after 6-20 mm into two children whose radii follow Murray's law
(``r^3 = r1^3 + r2^3``) until the radius falls below 0.3 mm.

The tree is built in template space, mapped into the subject by the inverse spatial transform and
rasterised with partial volume: a voxel at distance ``d`` from the centre line of a vessel of
radius ``r`` gets a blood fraction ``clip(0.5 + (r - d) / h, 0, 1) * min(1, pi r^2 / h^2)``
(edge-of-a-plane for wide vessels, cross-section area for vessels thinner than a voxel of edge h).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import interpolate, spatial

from mrsynth_cli.phantom.anatomy import Atlas, Grid, SubjectTransform

__all__ = ["VesselTree", "VesselMap", "grow_vessel_tree", "rasterise_vessels", "blood_velocity"]

#: Smallest radius (mm) grown; the smallest vessels TOF shows at 0.5 mm voxels.
MIN_RADIUS_MM = 0.28
#: Walking step (mm).
STEP_MM = 0.5

# Right-side trunks (MNI mm); mirrored for the left. (name, parent or None, radius start, radius end,
# control points). Landmarks are approximate positions of the vessels in the MNI152 template.
_TRUNKS_RIGHT = [
    (
        "ICA",
        None,
        2.3,
        2.0,
        [(20, -10, -72), (22, -6, -56), (18, 0, -42), (16, 3, -32), (15, 8, -26), (15, 3, -20), (13, -1, -14)],
    ),
    ("VA", None, 1.5, 1.4, [(11, -42, -72), (8, -40, -62), (4, -36, -52), (0.5, -33, -47)]),
    ("M1", "ICA", 1.4, 1.15, [(13, -1, -14), (20, 1, -14), (28, 3, -13), (35, 2, -10), (39, 0, -6)]),
    ("A1", "ICA", 1.0, 0.9, [(13, -1, -14), (9, 6, -12), (4, 13, -10), (1.5, 16, -9)]),
    (
        "A2",
        "A1",
        0.9,
        0.55,
        [
            (1.5, 16, -9),
            (2.5, 24, -4),
            (3, 32, 4),
            (3, 38, 14),
            (3, 36, 26),
            (3, 24, 33),
            (3, 8, 38),
            (3, -10, 40),
            (3, -30, 40),
            (3, -48, 36),
        ],
    ),
    ("PCom", "ICA", 0.6, 0.6, [(13, -1, -14), (13, -10, -15), (12, -21, -13)]),
    (
        "P1P3",
        "BA",
        1.1,
        0.7,
        [
            (0, -19, -16),
            (6, -20, -15),
            (12, -22, -13),
            (20, -32, -9),
            (25, -45, -5),
            (22, -60, 0),
            (15, -75, 4),
            (9, -88, 6),
        ],
    ),
    ("SCA", "BA", 0.7, 0.6, [(0, -22, -21), (8, -26, -22), (14, -34, -20), (17, -45, -18)]),
    ("PICA", "VA", 0.6, 0.5, [(5, -36, -55), (10, -45, -52), (13, -55, -45)]),
]
_BASILAR = ("BA", "VA", 1.6, 1.5, [(0, -33, -47), (0, -30, -38), (0, -26, -30), (0, -22, -22), (0, -19, -16)])

# Trees: (trunk, where on it (0..1), radius, territory, initial direction hint).
_TREE_ROOTS_RIGHT = [
    ("M1", 1.0, 1.05, "MCA", (0.2, 0.5, 1.0)),
    ("M1", 1.0, 1.0, "MCA", (0.4, -1.0, 0.3)),
    ("M1", 1.0, 0.8, "MCA", (0.3, -0.2, 1.0)),
    ("M1", 0.8, 0.6, "MCA", (0.6, 0.8, 0.2)),
    ("A2", 0.4, 0.7, "ACA", (0.1, 0.4, 1.0)),
    ("A2", 0.7, 0.5, "ACA", (0.2, 0.0, 1.0)),
    ("A2", 1.0, 0.5, "ACA", (0.2, -1.0, 0.5)),
    ("P1P3", 1.0, 0.65, "PCA", (0.2, -1.0, 0.3)),
    ("P1P3", 0.6, 0.6, "PCA", (0.5, -0.3, -0.8)),
    ("SCA", 1.0, 0.55, "CBL", (0.3, -1.0, 0.1)),
    ("PICA", 1.0, 0.5, "CBL", (0.2, -1.0, 0.2)),
]


@dataclass
class VesselTree:
    """Centre-line samples of the whole tree in template space.

    Attributes:
        points: (N, 3) MNI mm.
        radii: (N,) mm.
        path_mm: (N,) path length from where the vessel entered the field of view (mm).
        branch: (N,) index of the branch each sample belongs to (consecutive samples of a branch are
            neighbours on the centre line).
        names: name of each branch (trunk name or "<territory> tree").
    """

    points: np.ndarray
    radii: np.ndarray
    path_mm: np.ndarray
    branch: np.ndarray
    names: list[str]

    def info(self) -> dict[str, object]:
        lengths = float(np.sum(np.linalg.norm(np.diff(self.points, axis=0), axis=1)[np.diff(self.branch) == 0]))
        return {"branches": len(self.names), "centre_line_mm": round(lengths, 1)}


def blood_velocity(radius_mm: np.ndarray) -> np.ndarray:
    """Mean blood velocity (m/s) from the radius: ~0.4 m/s in the ICA, ~0.05 m/s in 0.3 mm arterioles."""
    return np.clip(0.40 * np.asarray(radius_mm) / 2.3, 0.05, 0.5)


@functools.lru_cache(maxsize=1)
def _hull_gradient() -> np.ndarray:
    from mrsynth_cli.phantom.anatomy import load_atlas

    atlas = load_atlas()
    return np.stack(np.gradient(atlas.hull_distance.astype(np.float32))).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _territories() -> dict[str, np.ndarray]:
    """Cortical target points (MNI mm) of each vascular territory, right side (x > 0)."""
    from mrsynth_cli.phantom.anatomy import load_atlas

    atlas = load_atlas()
    cortex = atlas.voxel_centres((atlas.gm > 0.5) & (atlas.hull_distance < -1.0))
    x, y, z = np.abs(cortex[:, 0]), cortex[:, 1], cortex[:, 2]
    hd = atlas.sample_nearest(atlas.hull_distance, cortex)
    cerebellum = (y < -40) & (z < -22)
    aca = ~cerebellum & (((x < 14) & (y > -55) & (z > 0)) | ((x < 28) & (z > 50) & (y > -35)))
    pca = ~cerebellum & ~aca & (((y < -68) & (z > -22)) | ((z < -8) & (y < -25) & (y > -75) & (hd > -15)))
    mca = ~cerebellum & ~aca & ~pca & (x > 28) & (z > -32) & (y > -78) & (y < 60) & (hd > -14)
    cbl = cerebellum & (hd > -10)
    right = cortex[:, 0] > 0
    pools = {"ACA": aca, "PCA": pca, "MCA": mca, "CBL": cbl}
    rng = np.random.default_rng(12345)  # fixed thinning, part of the atlas, not of a subject
    out = {}
    for name, sel in pools.items():
        points = cortex[sel & right]
        if len(points) > 6000:
            points = points[rng.choice(len(points), 6000, replace=False)]
        out[name] = points
    return out


def _spline_path(rng: np.random.Generator, control: np.ndarray, jitter: float, step: float) -> np.ndarray:
    """A smooth tortuous path through jittered control points, resampled every ``step`` mm."""
    pts = control + rng.normal(0.0, jitter, control.shape)
    pts[0] = control[0] + rng.normal(0.0, jitter * 0.5, 3)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    if len(pts) < 3:
        pts = np.vstack([pts[0], (pts[0] + pts[1]) / 2, pts[1]])
        t = np.array([0.0, t[-1] / 2, t[-1]])
    spline = interpolate.CubicSpline(t, pts, axis=0, bc_type="natural")
    dense_t = np.linspace(0.0, t[-1], max(int(t[-1] / (step / 4)), 4))
    dense = spline(dense_t)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    samples = np.arange(0.0, arc[-1], step)
    return np.stack([np.interp(samples, arc, dense[:, i]) for i in range(3)], axis=1)


class _Builder:
    def __init__(self, atlas: Atlas, rng: np.random.Generator) -> None:
        self.atlas = atlas
        self.rng = rng
        self.grad = _hull_gradient()
        self.pools = _territories()
        self.points: list[np.ndarray] = []
        self.radii: list[np.ndarray] = []
        self.paths: list[np.ndarray] = []
        self.names: list[str] = []
        self.trunks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(self, name: str, pts: np.ndarray, radii: np.ndarray, path: np.ndarray) -> None:
        self.points.append(pts)
        self.radii.append(radii)
        self.paths.append(path)
        self.names.append(name)

    def trunk(self, name: str, parent: str | None, r0: float, r1: float, control, side: float) -> None:
        control = np.array(control, dtype=np.float64) * np.array([side, 1.0, 1.0])
        pts = _spline_path(self.rng, control, 1.2, STEP_MM)
        if parent is not None and parent in self.trunks:
            parent_pts, _, parent_path = self.trunks[parent]
            nearest = int(np.argmin(np.linalg.norm(parent_pts - pts[0], axis=1)))
            pts = np.vstack([parent_pts[nearest], pts])  # connect exactly onto the parent
            start_path = parent_path[nearest]
        else:
            start_path = 0.0
        scale = self.rng.uniform(0.9, 1.1)
        radii = np.linspace(r0, r1, len(pts)) * scale
        path = start_path + np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        self.trunks[name] = (pts, radii, path)
        self.add(name, pts, radii, path)

    def _hull(self, x: float, y: float, z: float) -> tuple[float, float, float, float]:
        """Nearest-voxel hull distance and its gradient at one point (plain floats: called per step)."""
        a = self.atlas
        nx, ny, nz = a.shape
        i = min(max(int(round((x - a.origin[0]) / a.spacing)), 0), nx - 1)
        j = min(max(int(round((y - a.origin[1]) / a.spacing)), 0), ny - 1)
        k = min(max(int(round((z - a.origin[2]) / a.spacing)), 0), nz - 1)
        g = self.grad
        return float(a.hull_distance[i, j, k]), float(g[0, i, j, k]), float(g[1, i, j, k]), float(g[2, i, j, k])

    def _target(self, pool: np.ndarray, p: np.ndarray, forward: np.ndarray, lo: float, hi: float) -> np.ndarray:
        delta = pool - p
        dist = np.linalg.norm(delta, axis=1)
        ok = (dist > lo) & (dist < hi) & ((delta @ forward) > -0.2 * dist)
        if not ok.any():
            ok = dist > lo
        if not ok.any():
            return pool[int(self.rng.integers(len(pool)))]
        candidates = np.flatnonzero(ok)
        return pool[int(candidates[self.rng.integers(len(candidates))])]

    def tree(
        self,
        root: np.ndarray,
        direction: np.ndarray,
        radius: float,
        path0: float,
        territory: str,
        side: float,
        max_points: int = 9000,
    ) -> None:
        rng = self.rng
        pool = self.pools[territory] * np.array([side, 1.0, 1.0])
        direction = direction / np.linalg.norm(direction)
        target = self._target(pool, root, direction, 20.0, 60.0)
        stack = [(root.copy(), direction, radius, path0, target)]
        used = 0
        while stack and used < max_points:
            p, d, r, path, target = stack.pop()
            length = rng.uniform(8.0, 18.0) * (max(r, 0.35) / 0.7) ** 0.5
            n_steps = max(int(length / STEP_MM), 3)
            pts = np.empty((n_steps + 1, 3))
            pts[0] = p
            noise = rng.standard_normal((n_steps, 3)) * 0.22
            px, py, pz = (float(v) for v in p)
            dx, dy, dz = (float(v) for v in d)
            tx, ty, tz = (float(v) for v in target)
            for s in range(n_steps):
                ux, uy, uz = tx - px, ty - py, tz - pz
                dist = math.sqrt(ux * ux + uy * uy + uz * uz)
                if dist < 3.0:
                    target = self._target(pool, np.array([px, py, pz]), np.array([dx, dy, dz]), 8.0, 25.0)
                    tx, ty, tz = (float(v) for v in target)
                    ux, uy, uz = tx - px, ty - py, tz - pz
                    dist = math.sqrt(ux * ux + uy * uy + uz * uz)
                w = 0.22 / max(dist, 1e-6)
                nx_, ny_, nz_ = noise[s]
                dx, dy, dz = dx + w * ux + nx_, dy + w * uy + ny_, dz + w * uz + nz_
                hull, gx, gy, gz = self._hull(px, py, pz)
                if hull > -2.0:  # too close to the skull: turn back inwards
                    gn = 0.8 / max(math.sqrt(gx * gx + gy * gy + gz * gz), 1e-6)
                    dx, dy, dz = dx - gn * gx, dy - gn * gy, dz - gn * gz
                dn = 1.0 / max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-9)
                dx, dy, dz = dx * dn, dy * dn, dz * dn
                px, py, pz = px + STEP_MM * dx, py + STEP_MM * dy, pz + STEP_MM * dz
                pts[s + 1] = (px, py, pz)
            p = pts[-1].copy()
            d = np.array([dx, dy, dz])
            radii = np.full(len(pts), r)
            paths = path + STEP_MM * np.arange(len(pts))
            self.add(f"{territory} tree", pts, radii, paths)
            used += len(pts)
            k1 = rng.uniform(0.75, 0.93)
            r_major = r * k1
            r_minor = r * (1.0 - k1**3) ** (1.0 / 3.0)
            end_path = paths[-1]
            if r_major >= MIN_RADIUS_MM:
                stack.append((p, d, r_major, end_path, target))
            if r_minor >= MIN_RADIUS_MM:
                new_target = self._target(pool, p, d, 15.0, 50.0)
                turn = (new_target - p) / max(float(np.linalg.norm(new_target - p)), 1e-6)
                d_minor = d + 1.5 * turn
                stack.append((p, d_minor / np.linalg.norm(d_minor), r_minor, end_path, new_target))

    def perforators(self, side: float) -> None:
        """Lenticulostriate arteries: thin vessels rising from M1 into the basal ganglia."""
        pts, radii, path = self.trunks[f"M1{'R' if side > 0 else 'L'}"]
        for _ in range(int(self.rng.integers(3, 6))):
            i = int(self.rng.integers(len(pts) // 5, 4 * len(pts) // 5))
            start = pts[i]
            top = start + np.array([side * self.rng.uniform(-4, 6), self.rng.uniform(-8, 4), self.rng.uniform(14, 24)])
            mid = (start + top) / 2 + self.rng.normal(0, 2.0, 3)
            line = _spline_path(self.rng, np.vstack([start, mid, top]), 0.5, STEP_MM)
            r = self.rng.uniform(0.3, 0.45)
            self.add("lenticulostriate", line, np.full(len(line), r), path[i] + STEP_MM * np.arange(len(line)))


def grow_vessel_tree(rng: np.random.Generator, atlas: Atlas) -> VesselTree:
    """Grow one subject's arterial tree in template space."""
    b = _Builder(atlas, rng)
    for side, tag in ((1.0, "R"), (-1.0, "L")):
        for name, parent, r0, r1, control in _TRUNKS_RIGHT[:2]:
            b.trunk(name + tag, None if parent is None else parent + tag, r0, r1, control, side)
    b.trunk("BA", "VAR", *_BASILAR[2:], 1.0)
    for side, tag in ((1.0, "R"), (-1.0, "L")):
        for name, parent, r0, r1, control in _TRUNKS_RIGHT[2:]:
            parent_name = "BA" if parent == "BA" else parent + tag
            b.trunk(name + tag, parent_name, r0, r1, control, side)
    a1r, a1l = b.trunks["A1R"][0][-1], b.trunks["A1L"][0][-1]
    acom = np.linspace(a1r, a1l, max(int(np.linalg.norm(a1r - a1l) / STEP_MM), 2))
    b.add("ACom", acom, np.full(len(acom), 0.6), np.full(len(acom), b.trunks["A1R"][2][-1]))
    for side, tag in ((1.0, "R"), (-1.0, "L")):
        for trunk, where, radius, territory, hint in _TREE_ROOTS_RIGHT:
            pts, _, path = b.trunks[trunk + tag]
            i = min(int(where * (len(pts) - 1)), len(pts) - 1)
            direction = np.array(hint) * np.array([side, 1.0, 1.0]) + rng.normal(0, 0.2, 3)
            b.tree(pts[i], direction, radius * rng.uniform(0.9, 1.1), float(path[i]), territory, side)
        b.perforators(side)
    branch = np.concatenate([np.full(len(p), i) for i, p in enumerate(b.points)])
    return VesselTree(np.concatenate(b.points), np.concatenate(b.radii), np.concatenate(b.paths), branch, b.names)


@dataclass
class VesselMap:
    """Rasterised vessels on the output grid (sparse: only voxels with blood).

    Attributes:
        index: flat voxel indices (C order) with a blood fraction > 0.
        fraction: blood volume fraction there.
        radius: radius (mm) of the vessel that dominates the voxel.
        path_mm: path length of that vessel from its entry into the field of view.
    """

    index: np.ndarray
    fraction: np.ndarray
    radius: np.ndarray
    path_mm: np.ndarray

    def dense(self, shape: tuple[int, int, int], values: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros(int(np.prod(shape)), dtype=np.float32)
        out[self.index] = self.fraction if values is None else values
        return out.reshape(shape)


def rasterise_vessels(tree: VesselTree, transform: SubjectTransform, grid: Grid) -> VesselMap:
    """Map the tree into the subject and compute partial-volume blood fractions on ``grid``."""
    h = grid.spacing
    points = transform.to_subject(tree.points)
    radii = tree.radii * transform.mean_scale
    # Densify so that the samples are at most a quarter voxel apart along each branch.
    step = float(np.median(np.linalg.norm(np.diff(tree.points, axis=0), axis=1)))
    factor = int(np.ceil(step / (0.25 * h)))
    if factor > 1:
        same = tree.branch[1:] == tree.branch[:-1]
        extra_p, extra_r, extra_s = [points], [radii], [tree.path_mm]
        for f in range(1, factor):
            w = f / factor
            extra_p.append(((1 - w) * points[:-1] + w * points[1:])[same])
            extra_r.append(((1 - w) * radii[:-1] + w * radii[1:])[same])
            extra_s.append(((1 - w) * tree.path_mm[:-1] + w * tree.path_mm[1:])[same])
        points, radii, paths = np.concatenate(extra_p), np.concatenate(extra_r), np.concatenate(extra_s)
    else:
        paths = tree.path_mm
    idx = grid.to_index(points)
    inside = np.all((idx > -3) & (idx < np.array(grid.shape) + 2), axis=1)
    points, radii, paths, idx = points[inside], radii[inside], paths[inside], idx[inside]
    if len(points) == 0:
        empty = np.zeros(0)
        return VesselMap(empty.astype(np.int64), empty.astype(np.float32), empty, empty)
    # Candidate voxels: a cube around each sample, wide enough for its radius.
    reach = np.ceil((radii + 0.9 * h) / h).astype(int)
    centre = np.rint(idx).astype(np.int64)
    shape = np.array(grid.shape)
    candidates = []
    for k in np.unique(reach):
        sel = centre[reach == k]
        offsets = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        vox = (sel[:, None, :] + offsets[None]).reshape(-1, 3)
        ok = np.all((vox >= 0) & (vox < shape), axis=1)
        vox = vox[ok]
        candidates.append(np.ravel_multi_index(vox.T, grid.shape))
    flat = np.unique(np.concatenate(candidates))
    vox = np.stack(np.unravel_index(flat, grid.shape), axis=1)
    centres = vox * h + grid.affine[:3, 3]
    tree_index = spatial.cKDTree(points)
    k_near = min(6, len(points))
    dist, nearest = tree_index.query(centres, k=k_near)
    if k_near == 1:
        dist, nearest = dist[:, None], nearest[:, None]
    r = radii[nearest]
    frac = np.clip(0.5 + (r - dist) / h, 0.0, 1.0) * np.minimum(1.0, np.pi * r * r / (h * h))
    best = np.argmax(frac, axis=1)
    rows = np.arange(len(flat))
    fraction = frac[rows, best]
    keep = fraction > 0.01
    chosen = nearest[rows, best][keep]
    return VesselMap(
        flat[keep],
        fraction[keep].astype(np.float32),
        radii[chosen].astype(np.float32),
        paths[chosen].astype(np.float32),
    )
