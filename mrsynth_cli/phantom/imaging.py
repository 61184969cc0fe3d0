"""Image formation: partial-volume signal sums, quantitative maps, bias field and Rician noise.

For each contrast the noiseless image is ``S(y) = M0 * sum_k f_k(y) S_k(y)``, the volume fractions
``f_k`` of the tissues in the voxel times each tissue's signal from :mod:`.signal` (with its own T1,
T2 and PD, gadolinium-shortened after contrast). Brain tissue carries a mild smooth spatial
variation of its T1/T2/PD ("texture", a few per cent) so that images are not piecewise constant.
Then ``I = |B(y) S(y) + n_re + i n_im|``: a smooth multiplicative receive bias ``B`` (cubic
polynomial, +-10-20 %) and complex Gaussian noise whose magnitude is Rician, with sigma set by an
SNR of 20-40 relative to the mean white-matter signal of that contrast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrsynth_cli.phantom.anatomy import CoarseGrid, Grid, smooth_random_field, upsample_separable
from mrsynth_cli.phantom.signal import (
    Protocol,
    gd_relaxation,
    inflow_gradient_echo,
    inversion_recovery,
    spin_echo,
    spoiled_gradient_echo,
)
from mrsynth_cli.phantom.tissues import Tissue, gd_relaxivity, tissue_params
from mrsynth_cli.phantom.vessels import VesselMap, blood_velocity

__all__ = [
    "SIGNAL_SCALE",
    "Texture",
    "random_texture",
    "tissue_signal",
    "noiseless_image",
    "quantitative_maps",
    "bias_field",
    "add_rician_noise",
    "white_matter_mean",
]

#: M0 scale of the images (arbitrary units; pure water with full relaxation gives this value).
SIGNAL_SCALE = 1000.0
#: Tissues whose relaxation parameters carry the smooth texture.
TEXTURED = (Tissue.GM, Tissue.WM)
#: Magnetisation-transfer suppression of macromolecule-rich tissue in TOF (MT-prepared TOF
#: sequences suppress parenchyma by roughly 20-30 %; blood, CSF and fat are hardly affected). Approximate.
TOF_MT_FACTOR = {
    Tissue.WM: 0.72,
    Tissue.GM: 0.8,
    Tissue.MUSCLE: 0.7,
    Tissue.OEDEMA: 0.85,
    Tissue.MS_LESION: 0.82,
    Tissue.MS_LESION_ENHANCING: 0.82,
    Tissue.ENHANCING_TUMOUR: 0.85,
}
#: Slab thickness (mm) over which inflowing blood is progressively saturated in multi-slab TOF.
TOF_SLAB_MM = 30.0


@dataclass
class Texture:
    """Relative variation (dense, float32) of T1, T2 and PD of the textured tissues."""

    t1: np.ndarray
    t2: np.ndarray
    pd: np.ndarray


def random_texture(rng: np.random.Generator, grid: Grid, amplitude: float = 0.04) -> Texture:
    """Smooth multiplicative fields 1 + a*n (n in [-1, 1], correlation length ~8 mm)."""
    coarse = CoarseGrid.covering(6.0)
    matrices = coarse.matrices(grid)
    fields = []
    for scale in (amplitude, 0.75 * amplitude, 0.5 * amplitude):
        f = upsample_separable(smooth_random_field(rng, coarse, 0.8), matrices)
        f *= np.float32(scale)
        f += np.float32(1.0)
        fields.append(f)
    return Texture(*fields)


def _relaxation(tissue: Tissue, field: float, gd_mm: dict[Tissue, float], contrast_agent: bool):
    p = tissue_params(tissue, field)
    t1, t2 = p.t1, p.t2
    conc = gd_mm.get(tissue, 0.0) if contrast_agent else 0.0
    if conc > 0:
        r1, r2 = gd_relaxivity(field)
        t1, t2 = gd_relaxation(t1, t2, conc, r1, r2)
    return p.pd, t1, t2


def tissue_signal(protocol: Protocol, pd, t1, t2):
    """Signal of stationary tissue for one protocol (no M0 scale)."""
    if protocol.sequence == "SE":
        return spin_echo(pd, t1, t2, protocol.repetition_time, protocol.echo_time)
    if protocol.sequence == "IR":
        return inversion_recovery(pd, t1, t2, protocol.repetition_time, protocol.inversion_time, protocol.echo_time)
    return spoiled_gradient_echo(pd, t1, t2, protocol.repetition_time, protocol.echo_time, protocol.flip_angle)


def _flow_void(radius_mm: np.ndarray) -> np.ndarray:
    """Fraction of arterial blood signal left in spin-echo images: fast flow in wide arteries leaves
    the slice between the 90 and 180 degree pulses (flow void); slow flow in small vessels does not."""
    return np.exp(-((np.asarray(radius_mm, dtype=np.float32) / 0.9) ** 2))


def _blood_signal(protocol: Protocol, field: float, gd_mm: dict[Tissue, float], vessels: VesselMap) -> np.ndarray:
    pd, t1, t2 = _relaxation(Tissue.BLOOD, field, gd_mm, protocol.gadolinium)
    if protocol.sequence == "GR":
        # Inflow: fresh blood meets n = (distance travelled in the slab) / (v TR) pulses.
        travelled = np.minimum(vessels.path_mm, TOF_SLAB_MM) * 1e-3
        n_pulses = travelled / (blood_velocity(vessels.radius) * protocol.repetition_time)
        return inflow_gradient_echo(
            pd, t1, t2, protocol.repetition_time, protocol.echo_time, protocol.flip_angle, n_pulses
        ).astype(np.float32)
    return (tissue_signal(protocol, pd, t1, t2) * _flow_void(vessels.radius)).astype(np.float32)


def noiseless_image(
    protocol: Protocol,
    field: float,
    fractions: dict[Tissue, np.ndarray],
    nonzero: dict[Tissue, np.ndarray],
    texture: Texture,
    gd_mm: dict[Tissue, float],
    vessels: VesselMap,
) -> np.ndarray:
    """Partial-volume sum of tissue signals (float32, scaled by :data:`SIGNAL_SCALE`)."""
    shape = next(iter(fractions.values())).shape
    out = np.zeros(int(np.prod(shape)), dtype=np.float32)
    tof = protocol.sequence == "GR"
    for tissue, fraction in fractions.items():
        if tissue is Tissue.BLOOD:
            continue
        index = nonzero[tissue]
        if index.size == 0:
            continue
        f = fraction.reshape(-1)[index]
        pd, t1, t2 = _relaxation(tissue, field, gd_mm, protocol.gadolinium)
        if tissue in TEXTURED:
            pd = pd * texture.pd.reshape(-1)[index]
            t1 = t1 * texture.t1.reshape(-1)[index]
            t2 = t2 * texture.t2.reshape(-1)[index]
        signal = tissue_signal(protocol, pd, t1, t2)
        if tof:
            signal = signal * TOF_MT_FACTOR.get(tissue, 1.0)
        out[index] += (f * signal).astype(np.float32)
    if vessels.index.size:
        out[vessels.index] += vessels.fraction * _blood_signal(protocol, field, gd_mm, vessels)
    out *= np.float32(SIGNAL_SCALE)
    return out.reshape(shape)


def quantitative_maps(
    field: float,
    fractions: dict[Tissue, np.ndarray],
    nonzero: dict[Tissue, np.ndarray],
    texture: Texture,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True pre-contrast T1 (s), T2 (s) and PD maps.

    In a voxel holding several tissues the maps give the water-weighted fast-exchange average:
    ``PD = sum f_k PD_k``, ``1/T1 = sum f_k PD_k / T1_k / PD`` (same for T2); 0 where PD = 0 (air).
    """
    shape = next(iter(fractions.values())).shape
    n = int(np.prod(shape))
    pd_map = np.zeros(n, dtype=np.float32)
    r1 = np.zeros(n, dtype=np.float32)
    r2 = np.zeros(n, dtype=np.float32)
    for tissue, fraction in fractions.items():
        index = nonzero[tissue]
        if index.size == 0:
            continue
        p = tissue_params(tissue, field)
        f = fraction.reshape(-1)[index]
        pd, t1, t2 = p.pd, p.t1, p.t2
        if tissue in TEXTURED:
            pd = pd * texture.pd.reshape(-1)[index]
            t1 = t1 * texture.t1.reshape(-1)[index]
            t2 = t2 * texture.t2.reshape(-1)[index]
        w = (f * pd).astype(np.float32)
        pd_map[index] += w
        r1[index] += w / np.float32(t1) if np.isscalar(t1) else w / t1.astype(np.float32)
        r2[index] += w / np.float32(t2) if np.isscalar(t2) else w / t2.astype(np.float32)
    water = pd_map > 1e-6
    t1_map = np.zeros(n, dtype=np.float32)
    t2_map = np.zeros(n, dtype=np.float32)
    t1_map[water] = pd_map[water] / r1[water]
    t2_map[water] = pd_map[water] / r2[water]
    return t1_map.reshape(shape), t2_map.reshape(shape), pd_map.reshape(shape)


def _polynomial_field(rng: np.random.Generator, coarse: CoarseGrid, degree: int = 3) -> np.ndarray:
    axes = [np.linspace(-1.0, 1.0, n) for n in coarse.shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    field = np.zeros(coarse.shape)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                if i + j + k == 0:
                    continue
                field += rng.normal(0.0, 1.0 / (1 + i + j + k)) * x**i * y**j * z**k
    return field


def bias_field(
    rng: np.random.Generator, grid: Grid, amplitude: float, shared: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth multiplicative field ``1 + a p`` with p a cubic polynomial scaled to max |p| = 1 over
    the central (head) region; ``shared`` (a coarse polynomial) is mixed in at 60 % so that the
    contrasts of one subject share part of their receive-coil profile. Returns (field, coarse poly)."""
    coarse = CoarseGrid.covering(16.0, margin_cells=0)
    own = _polynomial_field(rng, coarse)
    poly = (
        own
        if shared is None
        else 0.6 * shared / max(np.abs(shared).max(), 1e-12) + 0.4 * own / max(np.abs(own).max(), 1e-12)
    )
    centres = [np.arange(n) * coarse.spacing + coarse.origin[i] for i, n in enumerate(coarse.shape)]
    cx, cy, cz = np.meshgrid(*centres, indexing="ij")
    head = (cx / 85.0) ** 2 + (cy / 100.0) ** 2 + (cz / 80.0) ** 2 <= 1.0
    poly = poly - poly[head].mean()
    poly = poly / max(float(np.abs(poly[head]).max()), 1e-12)
    field = upsample_separable(poly, coarse.matrices(grid))
    field *= np.float32(amplitude)
    field += np.float32(1.0)
    return np.maximum(field, np.float32(0.5)), own


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``|S + n_re + i n_im|`` with n ~ N(0, sigma^2): Rician magnitude noise (in place, float32)."""
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += image
    np.square(real, out=real)
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    np.square(imag, out=imag)
    real += imag
    del imag
    np.sqrt(real, out=image)
    return image


def white_matter_mean(image: np.ndarray, wm_fraction: np.ndarray) -> float:
    """Mean of ``image`` over voxels that are at least 90 % WM (falls back to 50 %)."""
    for threshold in (0.9, 0.5):
        sel = wm_fraction >= threshold
        if sel.any():
            return float(image[sel].mean())
    return float(image[image > 0].mean()) if (image > 0).any() else 1.0
