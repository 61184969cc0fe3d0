"""A PNG montage of 3D volumes: one row per volume, axial / coronal / sagittal slices (and MIPs).

Volumes are reoriented to RAS from their affine, shown at their physical aspect ratio (square mm
per pixel), in neurological convention (subject's right on the image right; anterior up on axial,
superior up on coronal and sagittal), each windowed from its 0.5th to its 99.5th percentile.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.atomic import write_bytes_atomic
from mrsynth_cli.io.volume import Volume

__all__ = ["write_montage", "montage_image"]

#: Rows whose name contains one of these also get a row of maximum-intensity projections.
MIP_KEYWORDS = ("tof", "angio", "mra")
#: Fraction of the volume (centred) that the MIPs project through.
MIP_SLAB = 0.6
_LABEL_WIDTH = 90  # at least; wider when a row label needs it
_HEADER_HEIGHT = 16
_GAP = 4


def _as_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``data`` to (closest) RAS; return it with its voxel sizes (mm)."""
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = zooms[np.argsort(ornt[:, 0])]  # voxel size along each RAS output axis
    return ras, zooms


def _window(data: np.ndarray) -> tuple[float, float]:
    sample = data.reshape(-1)
    if sample.size > 2_000_000:
        sample = sample[:: sample.size // 2_000_000 + 1]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        hi = lo + (float(np.abs(lo)) or 1.0)
    return float(lo), float(hi)


def _to_uint8(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    scaled = (np.nan_to_num(plane, nan=lo) - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _panel(plane: np.ndarray, spacing: tuple[float, float], px_per_mm: float, window) -> Image.Image:
    """A 2D plane indexed (horizontal, vertical-up) as a PIL image with square mm pixels."""
    image = Image.fromarray(_to_uint8(np.flipud(plane.T), window))
    width = max(1, int(round(plane.shape[0] * spacing[0] * px_per_mm)))
    height = max(1, int(round(plane.shape[1] * spacing[1] * px_per_mm)))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _slab_mip(ras: np.ndarray, axis: int, keep: float = MIP_SLAB) -> np.ndarray:
    """Maximum-intensity projection over the central ``keep`` part of ``axis`` (a thick-slab MIP,
    which leaves out the scalp at the ends of the projection, as angiography MIPs do)."""
    n = ras.shape[axis]
    lo = int(round(n * (1.0 - keep) / 2.0))
    hi = max(lo + 1, n - lo)
    return np.take(ras, np.arange(lo, hi), axis=axis).max(axis=axis)


def _planes(ras: np.ndarray, zooms: np.ndarray, point: np.ndarray, mip: bool):
    """(axial, coronal, sagittal) planes as (horizontal, vertical) arrays with their spacings."""
    i, j, k = (int(v) for v in point)
    if mip:
        axial, coronal, sagittal = (_slab_mip(ras, axis) for axis in (2, 1, 0))
    else:
        axial, coronal, sagittal = ras[:, :, k], ras[:, j, :], ras[:, :, :][i, :, :]
    return [
        (axial, (zooms[0], zooms[1])),
        (coronal, (zooms[0], zooms[2])),
        (sagittal, (zooms[1], zooms[2])),
    ]


def montage_image(
    rows: Mapping[str, np.ndarray | Volume],
    affine: np.ndarray | None = None,
    *,
    point_mm: Iterable[float] | None = None,
    panel_height: int = 220,
    mip_keywords: Iterable[str] = MIP_KEYWORDS,
) -> Image.Image:
    """Build the montage as a PIL image (see :func:`write_montage`)."""
    if not rows:
        raise InputError("nothing to show in the montage", "give at least one volume")
    prepared = []
    extent_mm = 1.0
    for name, item in rows.items():
        if isinstance(item, Volume):
            data, aff = item.data, item.affine
        else:
            data, aff = np.asarray(item), (np.eye(4) if affine is None else np.asarray(affine, dtype=float))
        if data.ndim != 3:
            raise InputError(f"montage row '{name}' has shape {data.shape}, not 3D", "give 3D volumes")
        ras, zooms = _as_ras(np.asarray(data, dtype=np.float32), aff)
        if point_mm is not None:
            ijk = np.linalg.solve(aff, np.array([*point_mm, 1.0]))[:3]
            ornt = nib.orientations.io_orientation(aff)
            point = np.empty(3)
            for src, (dst, flip) in enumerate(ornt):
                n = data.shape[src]
                point[int(dst)] = (n - 1 - ijk[src]) if flip < 0 else ijk[src]
            point = np.clip(np.rint(point), 0, np.array(ras.shape) - 1)
        else:
            point = (np.array(ras.shape) - 1) // 2
        extent_mm = max(extent_mm, float(ras.shape[1] * zooms[1]), float(ras.shape[2] * zooms[2]))
        prepared.append((name, ras, zooms, point, _window(ras)))
        if any(key in name.lower() for key in mip_keywords):
            prepared.append((f"{name} MIP", ras, zooms, None, _window(_slab_mip(ras, 2))))
    px_per_mm = panel_height / extent_mm

    rendered = []
    for name, ras, zooms, point, window in prepared:
        planes = _planes(ras, zooms, point if point is not None else np.zeros(3), mip=point is None)
        rendered.append((name, [_panel(p, s, px_per_mm, window) for p, s in planes]))
    col_widths = [max(row[1][c].width for row in rendered) for c in range(3)]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    label_width = max([_LABEL_WIDTH] + [int(measure.textlength(name, font=font)) + 10 for name, _ in rendered])
    width = label_width + sum(col_widths) + _GAP * 4
    heights = [max(p.height for p in panels) for _, panels in rendered]
    height = _HEADER_HEIGHT + sum(heights) + _GAP * (len(rendered) + 1)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x = label_width + _GAP
    for title, w in zip(("axial", "coronal", "sagittal"), col_widths, strict=True):
        draw.text((x + 2, 2), title, fill=255, font=font)
        x += w + _GAP
    y = _HEADER_HEIGHT + _GAP
    for (name, panels), h in zip(rendered, heights, strict=True):
        draw.text((4, y + 4), name, fill=255, font=font)
        x = label_width + _GAP
        for panel, w in zip(panels, col_widths, strict=True):
            canvas.paste(panel, (x + (w - panel.width) // 2, y + (h - panel.height) // 2))
            x += w + _GAP
        y += h + _GAP
    return canvas


def write_montage(
    rows: Mapping[str, np.ndarray | Volume],
    path: str | Path,
    affine: np.ndarray | None = None,
    *,
    point_mm: Iterable[float] | None = None,
    panel_height: int = 220,
) -> Path:
    """Write a PNG montage: per row (one volume), its axial, coronal and sagittal slices.

    Args:
        rows: row label -> 3D array or :class:`~mrsynth_cli.io.volume.Volume` (whose affine is used).
        path: destination PNG (written atomically).
        affine: voxel -> RAS affine for plain arrays (identity if omitted).
        point_mm: world point (RAS mm) the slices go through; the volume centre if omitted.
        panel_height: pixels for the largest extent of a panel.

    Rows whose label names a TOF/angio/MRA contrast are followed by a row of maximum-intensity
    projections through the central 60 % of the volume along each axis (a thick-slab MIP). Each row
    is windowed from its 0.5th to its 99.5th percentile.
    """
    image = montage_image(rows, affine, point_mm=point_mm, panel_height=panel_height)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    path = Path(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path
