"""Simulate one phantom subject in memory: anatomy, lesions, vessels, six contrasts and ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.phantom.anatomy import (
    CoarseGrid,
    draw_choroid_plexus,
    head_fractions,
    load_atlas,
    make_grid,
    random_layers,
    random_transform,
    smooth_random_field,
    template_coordinates,
    upsample_separable,
)
from mrsynth_cli.phantom.imaging import (
    add_rician_noise,
    bias_field,
    noiseless_image,
    quantitative_maps,
    random_texture,
    white_matter_mean,
)
from mrsynth_cli.phantom.lesions import LESION_KINDS, apply_mass_effect, draw_lesions, plan_lesions
from mrsynth_cli.phantom.signal import Protocol, protocols
from mrsynth_cli.phantom.tissues import GD_CONCENTRATION_RANGE_MM, Tissue
from mrsynth_cli.phantom.vessels import grow_vessel_tree, rasterise_vessels

__all__ = [
    "PhantomSubject",
    "simulate_subject",
    "validate_parameters",
    "RESOLUTION_RANGE_MM",
    "SNR_RANGE",
    "BIAS_RANGE",
    "LESION_TISSUES",
]

#: Accepted isotropic voxel sizes (mm).
RESOLUTION_RANGE_MM = (0.5, 4.0)
#: SNR (mean WM signal / noise sigma) drawn per contrast.
SNR_RANGE = (20.0, 40.0)
#: Peak relative amplitude of the bias field drawn per contrast.
BIAS_RANGE = (0.10, 0.20)
#: Tissue classes that form the lesion mask.
LESION_TISSUES = (
    Tissue.NECROSIS,
    Tissue.ENHANCING_TUMOUR,
    Tissue.OEDEMA,
    Tissue.MS_LESION,
    Tissue.MS_LESION_ENHANCING,
)
#: A voxel belongs to the vessel mask when at least this fraction of it is blood.
VESSEL_MASK_FRACTION = 0.25


@dataclass
class PhantomSubject:
    """One simulated subject, all arrays on one RAS grid (float32 unless noted).

    Attributes:
        images: contrast -> image (bias field and Rician noise included).
        fractions: tissue -> volume fraction in [0, 1] (partial volume; they sum to <= 1, the rest is air).
        labels: hard labels (uint8, :class:`~mrsynth_cli.phantom.tissues.Tissue` values, 0 = air).
        brain_mask, lesion_mask, vessel_mask: bool masks.
        t1_map, t2_map: true pre-contrast relaxation times (s); pd_map: proton density (water = 1).
        affine: 4x4 voxel -> RAS mm.
        protocols: contrast -> acquisition parameters (s, degrees).
        field_strength: tesla.
        info: the random parameters drawn (transform, lesions, SNR, bias, gadolinium, vessels).
    """

    images: dict[Contrast, np.ndarray]
    fractions: dict[Tissue, np.ndarray]
    labels: np.ndarray
    brain_mask: np.ndarray
    lesion_mask: np.ndarray
    vessel_mask: np.ndarray
    t1_map: np.ndarray
    t2_map: np.ndarray
    pd_map: np.ndarray
    affine: np.ndarray
    protocols: dict[Contrast, Protocol]
    field_strength: float
    resolution_mm: float
    info: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.labels.shape)  # type: ignore[return-value]

    def fraction(self, tissue: Tissue) -> np.ndarray:
        """Volume fraction of ``tissue`` (zeros if the subject has none)."""
        if tissue in self.fractions:
            return self.fractions[tissue]
        return np.zeros(self.shape, dtype=np.float32)


def validate_parameters(resolution_mm: float, lesions: str, field_strength: float) -> tuple[float, str, float]:
    """Check the simulation parameters; raise :class:`InputError` with a one-line message."""
    try:
        resolution = float(resolution_mm)
    except (TypeError, ValueError):
        raise InputError(f"resolution {resolution_mm!r} is not a number", "give a voxel size in mm, e.g. 1") from None
    low, high = RESOLUTION_RANGE_MM
    if not np.isfinite(resolution) or not low <= resolution <= high:
        raise InputError(f"resolution {resolution_mm} mm is outside {low:g}-{high:g} mm", "give --resolution in 0.5-4")
    kind = str(getattr(lesions, "value", lesions)).lower()
    if kind == "tumor":
        kind = "tumour"
    if kind not in LESION_KINDS:
        raise InputError(f"unknown lesion type '{lesions}'", f"use one of {', '.join(LESION_KINDS)}")
    try:
        field_t = float(field_strength)
    except (TypeError, ValueError):
        raise InputError(f"field strength {field_strength!r} is not a number", "use 1.5 or 3") from None
    if abs(field_t - 1.5) < 1e-6:
        field_t = 1.5
    elif abs(field_t - 3.0) < 1e-6:
        field_t = 3.0
    else:
        raise InputError(f"field strength {field_strength} T is not simulated", "use --field 1.5 or --field 3")
    return resolution, kind, field_t


def spawn_generators(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """``rng.spawn(n)``: n independent child generators (also on numpy < 1.25, which lacks it)."""
    if hasattr(rng, "spawn"):
        return list(rng.spawn(n))
    bit_generator = rng.bit_generator
    seed_seq = getattr(bit_generator, "seed_seq", None) or bit_generator._seed_seq
    return [np.random.Generator(type(bit_generator)(child)) for child in seed_seq.spawn(n)]


def _hard_labels(fractions: dict[Tissue, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Arg-max over the tissue fractions, air (1 - their sum) included as label 0."""
    total = np.zeros(shape, dtype=np.float32)
    for f in fractions.values():
        total += f
    best = np.clip(1.0 - total, 0.0, 1.0)
    labels = np.zeros(shape, dtype=np.uint8)
    for tissue in sorted(fractions, key=int):
        f = fractions[tissue]
        better = f > best
        labels[better] = int(tissue)
        np.maximum(best, f, out=best)
    return labels


def simulate_subject(
    rng: np.random.Generator,
    resolution_mm: float = 1.0,
    lesions: str = "tumour",
    field_strength: float = 3.0,
    skull: bool = True,
) -> PhantomSubject:
    """Simulate one subject in memory.

    The generator is split into independent streams (anatomy, lesions, vessels, gadolinium, imaging),
    so e.g. the same seed with ``lesions="none"`` gives the same head without the tumour, and the
    anatomy does not depend on the resolution.

    Args:
        rng: the subject's random generator (see :func:`mrsynth_cli.phantom.subject_rng`).
        resolution_mm: isotropic voxel size, 0.5-4 mm.
        lesions: ``"tumour"``, ``"ms"`` or ``"none"``.
        field_strength: 1.5 or 3 (tesla): tissue parameters and protocols.
        skull: simulate dura, skull and scalp (else a skull-stripped-like head with CSF around the brain).

    Raises:
        InputError: a parameter is out of range.
    """
    resolution, kind, field_t = validate_parameters(resolution_mm, lesions, field_strength)
    rng_anatomy, rng_lesion, rng_vessel, rng_gd, rng_image = spawn_generators(rng, 5)
    atlas = load_atlas()
    grid = make_grid(resolution)

    # Anatomy: spatial transform, layers, tissue fractions.
    transform = random_transform(rng_anatomy)
    layers = random_layers(rng_anatomy)
    thickness_coarse = CoarseGrid.covering(20.0)
    thickness = upsample_separable(
        smooth_random_field(rng_anatomy, thickness_coarse, 1.0), thickness_coarse.matrices(grid)
    )
    thickness *= np.float32(0.25)
    thickness += np.float32(1.0)
    voxel_template_mm = resolution / transform.mean_scale
    x_mm = template_coordinates(transform, grid)
    sample_index = atlas.to_index(np.moveaxis(x_mm, 0, -1)).astype(np.float32).transpose(3, 0, 1, 2).copy()
    plan = plan_lesions(rng_lesion, kind, atlas)
    apply_mass_effect(plan, x_mm, sample_index, atlas, transform, grid)
    fractions, support = head_fractions(atlas, x_mm, sample_index, voxel_template_mm, layers, thickness, skull)
    del sample_index, thickness
    draw_choroid_plexus(fractions, x_mm, voxel_template_mm, transform, grid, rng_anatomy)
    draw_lesions(plan, fractions, x_mm, voxel_template_mm, transform, grid)
    del x_mm

    # Vessels replace whatever tissue they pass through (not air: none outside the head).
    tree = grow_vessel_tree(rng_vessel, atlas)
    vessels = rasterise_vessels(tree, transform, grid)
    if vessels.index.size:
        present = np.zeros(vessels.index.size, dtype=np.float32)
        for f in fractions.values():
            present += f.reshape(-1)[vessels.index]
        vessels.fraction = np.minimum(vessels.fraction, np.clip(present, 0.0, 1.0))
        keep_factor = 1.0 - vessels.fraction
        for f in fractions.values():
            flat = f.reshape(-1)
            flat[vessels.index] *= keep_factor
        fractions[Tissue.BLOOD] = vessels.dense(grid.shape)
    nonzero = {t: np.flatnonzero(f) for t, f in fractions.items()}

    # Gadolinium concentrations (mM) for this subject.
    gd_mm = {
        t: float(rng_gd.uniform(*r)) for t, r in sorted(GD_CONCENTRATION_RANGE_MM.items(), key=lambda i: int(i[0]))
    }

    # Images. Scalar imaging parameters come from their own stream, drawn before any noise, so that
    # they do not depend on the resolution (the number of noise samples does).
    rng_params, rng_noise = spawn_generators(rng_image, 2)
    protos = protocols(field_t)
    texture = random_texture(rng_params, grid)
    snr = {c.value: float(rng_params.uniform(*SNR_RANGE)) for c in protos}
    bias_amplitude = {c.value: float(rng_params.uniform(*BIAS_RANGE)) for c in protos}
    bias_seeds = spawn_generators(rng_params, len(protos))
    wm = fractions[Tissue.WM]
    images: dict[Contrast, np.ndarray] = {}
    shared = None
    for (contrast, protocol), bias_rng in zip(protos.items(), bias_seeds, strict=True):
        clean = noiseless_image(protocol, field_t, fractions, nonzero, texture, gd_mm, vessels)
        bias, own = bias_field(bias_rng, grid, bias_amplitude[contrast.value], shared)
        shared = own if shared is None else shared
        sigma = white_matter_mean(clean, wm) / snr[contrast.value]
        clean *= bias
        del bias
        images[contrast] = add_rician_noise(clean, sigma, rng_noise)
    t1_map, t2_map, pd_map = quantitative_maps(field_t, fractions, nonzero, texture)
    del texture

    labels = _hard_labels(fractions, grid.shape)
    lesion_total = np.zeros(grid.shape, dtype=np.float32)
    for tissue in LESION_TISSUES:
        if tissue in fractions:
            lesion_total += fractions[tissue]
    blood = fractions.get(Tissue.BLOOD)
    vessel_mask = blood >= VESSEL_MASK_FRACTION if blood is not None else np.zeros(grid.shape, dtype=bool)
    lesion_list = plan.info()
    for entry, centre in zip(lesion_list, plan.centres(), strict=True):
        entry["centre_mm"] = [round(float(v), 1) for v in transform.to_subject(centre[None])[0]]
    info: dict[str, object] = {
        "field_strength_t": field_t,
        "resolution_mm": resolution,
        "lesions": kind,
        "skull": bool(skull),
        "transform": {
            "scales": [round(float(s), 4) for s in transform.scales],
            "rotation_deg": [round(float(a), 2) for a in transform.angles_deg],
            "offset_mni_mm": [round(float(o), 2) for o in transform.offset],
        },
        "lesion_list": lesion_list,
        "snr_vs_wm": {k: round(v, 2) for k, v in snr.items()},
        "bias_amplitude": {k: round(v, 3) for k, v in bias_amplitude.items()},
        "gadolinium_mM": {Tissue(t).name.lower(): round(c, 3) for t, c in gd_mm.items()},
        "vessels": tree.info(),
    }
    return PhantomSubject(
        images=images,
        fractions=fractions,
        labels=labels,
        brain_mask=support >= 0.5,
        lesion_mask=lesion_total >= 0.5,
        vessel_mask=vessel_mask,
        t1_map=t1_map,
        t2_map=t2_map,
        pd_map=pd_map,
        affine=grid.affine.copy(),
        protocols=protos,
        field_strength=field_t,
        resolution_mm=resolution,
        info=info,
    )
