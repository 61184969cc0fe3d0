"""Lesions: a glioma-like tumour (necrosis, enhancing rim, oedema, mass effect) or MS plaques.

Lesions are planned in template (MNI) space from the atlas (location in white matter, distance to
the ventricles...) and drawn on the output grid by evaluating their shape at each voxel's template
coordinate, with soft (partial-volume) edges. They replace the normal tissue they occupy:

- ``tumour``: one lesion in the white matter of a random hemisphere, radius 10-22 mm, with an
  irregular outline. Inside: a necrotic core (long T1/T2) in a ring of enhancing tumour (takes up
  gadolinium); around it vasogenic oedema that spreads in the white matter (T2/FLAIR bright) and
  spares most of the cortex. The tumour pushes the surrounding tissue outwards (mass effect, a
  radial displacement of the sampling coordinates that vanishes away from it).
- ``ms``: 6-20 ovoid plaques, mostly periventricular with their long axis perpendicular to the
  ventricle wall (Dawson's fingers), some in the deep white matter and a few juxtacortical; each
  enhances with probability 0.08 (an active lesion).
- ``none``: no lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mrsynth_cli.phantom.anatomy import Atlas, Grid, SubjectTransform, soft_inside, template_box_to_slices
from mrsynth_cli.phantom.tissues import Tissue

__all__ = ["LESION_KINDS", "Tumour", "MSLesion", "LesionPlan", "plan_lesions", "apply_mass_effect", "draw_lesions"]

LESION_KINDS = ("tumour", "ms", "none")


@dataclass(frozen=True)
class Tumour:
    """A glioma-like tumour in template space (mm)."""

    centre: np.ndarray
    radius: float  # outer radius of the enhancing rim
    necrosis_radius: float
    oedema_radius: float
    irregularity: float  # relative amplitude (per noise standard deviation) of the outline's bumps
    mass_effect: float  # 0..1: how much the surrounding tissue is pushed out
    shape_noise: np.ndarray  # smooth noise on a cube around the centre (for the outline)
    core_noise: np.ndarray  # (for the necrosis outline)
    oedema_noise: np.ndarray
    noise_half_size: float  # half edge of the noise cube (mm)
    hemisphere: str

    def _noise(self, noise: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = noise.shape[0]
        idx = (x - self.centre.reshape(3, *([1] * (x.ndim - 1)))) / (2 * self.noise_half_size) + 0.5
        idx *= n - 1
        return ndimage.map_coordinates(noise, idx, order=1, mode="nearest", output=np.float32)

    def info(self) -> dict[str, object]:
        return {
            "type": "tumour",
            "hemisphere": self.hemisphere,
            "centre_mni_mm": [round(float(v), 1) for v in self.centre],
            "radius_mm": round(self.radius, 1),
            "necrosis_radius_mm": round(self.necrosis_radius, 1),
            "oedema_radius_mm": round(self.oedema_radius, 1),
        }


@dataclass(frozen=True)
class MSLesion:
    """One ovoid plaque in template space: centre, unit axes (rows) and semi-axes (mm)."""

    centre: np.ndarray
    axes: np.ndarray
    semi_axes: np.ndarray
    site: str
    enhancing: bool

    def info(self) -> dict[str, object]:
        return {
            "type": "ms",
            "site": self.site,
            "enhancing": self.enhancing,
            "centre_mni_mm": [round(float(v), 1) for v in self.centre],
            "semi_axes_mm": [round(float(v), 1) for v in self.semi_axes],
        }


@dataclass(frozen=True)
class LesionPlan:
    kind: str
    tumour: Tumour | None = None
    ms: list[MSLesion] = field(default_factory=list)

    def centres(self) -> list[np.ndarray]:
        """Template-space centres, in the order of :meth:`info`."""
        if self.tumour is not None:
            return [self.tumour.centre]
        return [lesion.centre for lesion in self.ms]

    def info(self) -> list[dict[str, object]]:
        if self.tumour is not None:
            return [self.tumour.info()]
        return [lesion.info() for lesion in self.ms]


def _pick(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    point = points[int(rng.integers(len(points)))]
    return point + rng.uniform(-0.5, 0.5, 3) * 1.5  # jitter within the template voxel


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Smooth Gaussian noise on an n^3 cube, unit standard deviation, clipped to +-2.5."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), sigma, mode="wrap")
    noise -= noise.mean()
    noise /= max(float(noise.std()), 1e-12)
    return np.clip(noise, -2.5, 2.5).astype(np.float32)


def plan_lesions(rng: np.random.Generator, kind: str, atlas: Atlas) -> LesionPlan:
    """Draw the lesions of one subject (template space)."""
    if kind == "none":
        return LesionPlan("none")
    if kind == "tumour":
        return LesionPlan("tumour", tumour=_plan_tumour(rng, atlas))
    if kind == "ms":
        return LesionPlan("ms", ms=_plan_ms(rng, atlas))
    raise ValueError(f"unknown lesion kind {kind!r}")


def _plan_tumour(rng: np.random.Generator, atlas: Atlas) -> Tumour:
    hemisphere = "right" if rng.random() < 0.5 else "left"
    sign = 1.0 if hemisphere == "right" else -1.0
    radius = float(rng.uniform(10.0, 22.0))
    mask = (atlas.wm > 0.85) & (atlas.hull_distance < -(radius + 6.0))
    points = atlas.voxel_centres(mask)
    sel = (points[:, 0] * sign > 14.0) & (points[:, 2] > -20.0) & (points[:, 1] > -85.0) & (points[:, 1] < 55.0)
    points = points[sel]
    if len(points) == 0:  # pragma: no cover - large radius fallback
        points = atlas.voxel_centres((atlas.wm > 0.85) & (atlas.hull_distance < -15))
        points = points[points[:, 0] * sign > 10]
    centre = _pick(rng, points)
    necrosis = radius * float(rng.uniform(0.3, 0.7))
    necrosis = min(necrosis, radius - 2.5)
    oedema = radius + float(rng.uniform(8.0, 22.0))
    half = oedema * 1.5 + 5.0
    return Tumour(
        centre=centre,
        radius=radius,
        necrosis_radius=necrosis,
        oedema_radius=oedema,
        irregularity=float(rng.uniform(0.08, 0.14)),
        mass_effect=float(rng.uniform(0.25, 0.5)),
        shape_noise=_smooth_noise(rng, 32, 1.6),
        core_noise=_smooth_noise(rng, 32, 1.3),
        oedema_noise=_smooth_noise(rng, 32, 2.0),
        noise_half_size=half,
        hemisphere=hemisphere,
    )


def _orthonormal(first: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = first / np.linalg.norm(first)
    helper = rng.standard_normal(3)
    b = helper - a * (helper @ a)
    b /= np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)])


def _plan_ms(rng: np.random.Generator, atlas: Atlas) -> list[MSLesion]:
    n = int(rng.integers(6, 21))
    vd = atlas.ventricle_distance
    pools = {
        "periventricular": atlas.voxel_centres((atlas.wm > 0.6) & (vd > 1.5) & (vd < 7.0)),
        "deep": atlas.voxel_centres((atlas.wm > 0.9) & (vd > 9.0) & (atlas.hull_distance < -18.0)),
        "juxtacortical": atlas.voxel_centres(
            (atlas.wm > 0.35) & (atlas.wm < 0.65) & (atlas.gm > 0.25) & (atlas.hull_distance < -6.0)
        ),
    }
    # Supratentorial cerebral white matter only.
    pools = {k: p[(p[:, 2] > -15.0) & (p[:, 1] > -90.0)] for k, p in pools.items()}
    grad = np.stack(np.gradient(vd.astype(np.float64)))
    lesions = []
    for _ in range(n):
        site = str(rng.choice(["periventricular", "deep", "juxtacortical"], p=[0.6, 0.3, 0.1]))
        centre = _pick(rng, pools[site])
        long_axis = float(rng.uniform(2.5, 7.0))
        ratio = rng.uniform(0.4, 0.75, 2)
        semi = np.array([long_axis, long_axis * ratio[0], long_axis * ratio[1]])
        if site == "periventricular":
            direction = np.array([atlas.sample_nearest(g, centre[None])[0] for g in grad])
            if np.linalg.norm(direction) < 1e-6:
                direction = rng.standard_normal(3)
        else:
            direction = rng.standard_normal(3)
            semi[0] = semi[1] * rng.uniform(1.0, 1.6)  # deep and juxtacortical: rounder
        if site == "periventricular":
            centre = centre + direction / max(np.linalg.norm(direction), 1e-6) * semi[0] * 0.5
        lesions.append(MSLesion(centre, _orthonormal(direction, rng), semi, site, bool(rng.random() < 0.08)))
    return lesions


def apply_mass_effect(
    plan: LesionPlan, x_mm: np.ndarray, sample_index: np.ndarray, atlas: Atlas, transform: SubjectTransform, grid: Grid
) -> None:
    """Displace the tissue-sampling coordinates radially away from a tumour (in place).

    ``x' = c + (x - c) (1 - a exp(-|x - c|^2 / (2 s^2)))`` with ``s`` the tumour radius: monotonic in
    ``|x - c|`` for a < 1, so tissue is compressed around the tumour without folding.
    """
    tumour = plan.tumour
    if tumour is None or tumour.mass_effect <= 0:
        return
    s = tumour.radius
    slices = template_box_to_slices(transform, grid, tumour.centre, 4.0 * s)
    if slices is None:
        return
    x = x_mm[(slice(None), *slices)]
    rel = x - tumour.centre.reshape(3, 1, 1, 1).astype(np.float32)
    r2 = (rel**2).sum(0)
    factor = 1.0 - tumour.mass_effect * np.exp(-r2 / (2.0 * s * s))
    moved = tumour.centre.reshape(3, 1, 1, 1) + rel * factor
    sample_index[(slice(None), *slices)] = atlas.to_index(np.moveaxis(moved, 0, -1)).transpose(3, 0, 1, 2)


def draw_lesions(
    plan: LesionPlan,
    fractions: dict[Tissue, np.ndarray],
    x_mm: np.ndarray,
    voxel_mm: float,
    transform: SubjectTransform,
    grid: Grid,
) -> None:
    """Replace normal tissue by the planned lesions' fractions (in place)."""
    if plan.tumour is not None:
        _draw_tumour(plan.tumour, fractions, x_mm, voxel_mm, transform, grid)
    for lesion in plan.ms:
        _draw_ms(lesion, fractions, x_mm, voxel_mm, transform, grid)


def _zeros_like(fractions: dict[Tissue, np.ndarray], tissue: Tissue) -> np.ndarray:
    if tissue not in fractions:
        fractions[tissue] = np.zeros_like(fractions[Tissue.WM])
    return fractions[tissue]


def _draw_tumour(t: Tumour, fractions, x_mm, voxel_mm, transform, grid) -> None:
    reach = t.oedema_radius * (1 + 0.4) + 3.0  # the noise is clipped to 2.5 sd
    slices = template_box_to_slices(transform, grid, t.centre, reach)
    if slices is None:
        return
    x = x_mm[(slice(None), *slices)]
    rel = x - t.centre.reshape(3, 1, 1, 1).astype(np.float32)
    r = np.sqrt((rel**2).sum(0))
    # Irregular outlines: the radius of each boundary varies smoothly with position.
    outline = t.radius * (1.0 + t.irregularity * t._noise(t.shape_noise, x))
    whole = soft_inside(r - outline, voxel_mm)
    core_outline = t.necrosis_radius * (1.0 + 1.5 * t.irregularity * t._noise(t.core_noise, x))
    core = np.minimum(soft_inside(r - core_outline, voxel_mm), soft_inside(r - (outline - 2.0), voxel_mm))
    rim = whole - core
    # Oedema: wider irregular region (fingers along the white matter), fading at its edge.
    oedema_reach = t.oedema_radius * (1.0 + 0.15 * t._noise(t.oedema_noise, x))
    fade = max(0.35 * (t.oedema_radius - t.radius), 2.0 * voxel_mm)  # oedema thins out over its edge
    oedema_region = soft_inside(r - oedema_reach, fade) * (1.0 - whole)

    gm, wm, csf = (fractions[k][slices] for k in (Tissue.GM, Tissue.WM, Tissue.CSF))
    others = [fractions[k][slices] for k in (Tissue.CHOROID_PLEXUS,) if k in fractions]
    brain = gm + wm + csf + sum(others)
    for arr in (gm, wm, csf, *others):
        arr *= 1.0 - whole
    _zeros_like(fractions, Tissue.NECROSIS)[slices] += core * brain
    _zeros_like(fractions, Tissue.ENHANCING_TUMOUR)[slices] += rim * brain
    from_wm = oedema_region * wm
    from_gm = 0.3 * oedema_region * gm
    wm -= from_wm
    gm -= from_gm
    _zeros_like(fractions, Tissue.OEDEMA)[slices] += from_wm + from_gm


def _draw_ms(lesion: MSLesion, fractions, x_mm, voxel_mm, transform, grid) -> None:
    slices = template_box_to_slices(transform, grid, lesion.centre, float(lesion.semi_axes.max()) + 3.0)
    if slices is None:
        return
    x = x_mm[(slice(None), *slices)]
    rel = x - lesion.centre.reshape(3, 1, 1, 1).astype(np.float32)
    proj = np.einsum("ij,jxyz->ixyz", lesion.axes.astype(np.float32), rel)
    q = np.sqrt(sum((proj[i] / np.float32(lesion.semi_axes[i])) ** 2 for i in range(3)))
    # Signed distance approximated by (q - 1) times the smallest semi-axis (exact for a sphere).
    shape = soft_inside((q - 1.0) * np.float32(lesion.semi_axes.min()), voxel_mm)
    gm, wm = fractions[Tissue.GM][slices], fractions[Tissue.WM][slices]
    tissue = Tissue.MS_LESION_ENHANCING if lesion.enhancing else Tissue.MS_LESION
    from_wm = shape * wm
    from_gm = 0.5 * shape * gm
    wm -= from_wm
    gm -= from_gm
    _zeros_like(fractions, tissue)[slices] += from_wm + from_gm
