"""Tissue masks: CSF, GM and WM partial-volume maps, hard labels and an abnormal (lesion) class.

Two backends, chosen by ``method`` (``auto``: FAST when FSL provides it, else embedded):

``fsl`` (``"fsl-fast"``)
    FSL FAST through fslpy's wrapper (``fsl.wrappers.fast``):
    ``fast --out=<prefix> -n 3 -H 0.1 -I 4 -l 20 (-t <type> | -S <channels>) <images>`` on the
    brain-masked inputs, written to a temporary folder with ``FSLOUTPUTTYPE=NIFTI_GZ``. ``-t`` (1 T1,
    2 T2/FLAIR, 3 PD) is given for one channel; several channels take ``-S``. FAST's ``_pve_<k>``
    maps are read back and put in CSF, GM, WM order by their mean intensity on the primary channel
    (see :func:`class_order`), whatever order FAST wrote them in.

``embedded`` (``"embedded-hmrf"``)
    FAST's approach written in numpy (no FSL): a hidden Markov random field fitted by
    expectation-maximisation (Zhang, Brady & Smith, IEEE TMI 20(1), 2001) on one or more channels,
    with partial volume in the likelihood rather than as a separate step.

    1. Every channel is bias-corrected with N4 (:mod:`mrsynth_cli.preprocessing.bias`) inside the
       brain mask and divided by its median there.
    2. Start: k-means on the standardised channels from the 15/50/85th percentiles of the primary one.
    3. Model: three pure classes with their own means and one shared covariance (noise and
       texture), plus the two-class mixtures ``t mu_a + (1 - t) mu_b`` with ``t`` uniform on [0, 1]
       (likelihood integrated over ``t`` in closed form, see :func:`_component_loglik`). A mixture
       is left out when the third class lies alongside its segment within 3 noise SDs (on T1
       alone a CSF-WM mixture is indistinguishable from GM). The components have equal prior weights.
    4. MRF: the prior of a component at voxel i adds ``beta * sum_j w_ij <c, s_j>``, with ``s_j``
       the neighbours' current class fractions (mean field), ``c`` the component's class content
       and ``w_ij = 0.7^(axes in which j differs from i)`` over the 26 neighbours (a separable
       stand-in for FAST's 1/distance weights). EM runs at ``beta = 0.1`` (FAST's ``-H``), first on
       every second voxel along each axis, then at full resolution; the M-step solves the three
       means jointly over pure and mixed voxels and takes the covariance from the residuals.
    5. With the parameters fixed, a few mean-field rounds at ``label_beta = 0.8`` give the final
       class fractions (the PVE maps; they sum to 1 in the brain) and the hard labels (their
       arg-max). The stronger prior is kept out of estimation because it pulls the means together.

Class names follow the primary channel's contrast (the first of T1, T1ce, T2, PD, FLAIR, TOF among
the inputs; a volume without a known contrast counts as T1): on T1 CSF < GM < WM, on T2 and PD
CSF > GM > WM, on FLAIR CSF is darkest and GM brighter than WM.

**Abnormal class** (label 4; needs two or more channels, or FLAIR). Candidates are outliers of the
tissue model: the squared whitened distance to the nearest pure mean, mixture segment or
three-tissue point (and to each class's own spread, from its >= 80 % pure voxels) beyond the
chi-square quantile of ``outlier_p`` (seeds) or ``outlier_grow_p`` (growth). They must be bright
where lesions are bright: with FLAIR, more than ``flair_grow_z`` robust SDs above the brighter of
GM and WM (FLAIR-bright tissue voxels are candidates on their own, seeds beyond ``flair_seed_z``);
without FLAIR, brighter than GM and WM on T2, PD or T1ce. Seeds also need white-matter
surroundings (the normal tissue within ``wm_context_mm`` is at least ``wm_context`` WM), which
drops FLAIR-bright cortex and vessels in sulci. Seeds grow into connected candidates
(hysteresis); voxels within ``edge_mm`` of the mask border, components under
``min_lesion_mm3`` and components mostly surrounded by CSF (choroid plexus, cisterns) are dropped,
and enclosed cavities (a necrotic core) are filled. EM is then rerun without the abnormal voxels
so that lesions do not bias the tissue statistics; the PVE maps still cover them, only the labels
say 4. The FAST backend applies the same test to the N4-corrected inputs, with class means and
noise fitted to FAST's PVE maps.
"""

from __future__ import annotations

import logging
import math
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage, special, stats

from mrsynth_cli.errors import InputError, RuntimeFailure
from mrsynth_cli.fsl import find_fsl_tool, fsl_output_type
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.volume import Volume, check_same_grid

__all__ = [
    "TISSUE_METHODS",
    "CLASS_NAMES",
    "LABEL_VALUES",
    "HmrfSettings",
    "AbnormalSettings",
    "TissueResult",
    "segment_tissues",
    "check_method",
    "class_order",
    "primary_index",
]

log = logging.getLogger(__name__)

TISSUE_METHODS = ("auto", "fsl", "embedded")
#: Tissue class names, in label order.
CLASS_NAMES = ("CSF", "GM", "WM")
#: Values of the hard label map.
LABEL_VALUES = {"background": 0, "CSF": 1, "GM": 2, "WM": 3, "abnormal": 4}
#: The contrast whose intensity order names the classes, most preferred first.
PRIMARY_ORDER = (Contrast.T1, Contrast.T1CE, Contrast.T2, Contrast.PD, Contrast.FLAIR, Contrast.TOF)
#: FAST's ``-t`` per contrast (1 T1, 2 T2, 3 PD).
FAST_TYPE = {
    Contrast.T1: 1,
    Contrast.T1CE: 1,
    Contrast.TOF: 1,
    Contrast.T2: 2,
    Contrast.FLAIR: 2,
    Contrast.PD: 3,
}
#: FAST's options from the issue: smoothness, bias iterations, bias smoothing (mm).
FAST_OPTIONS = {"H": 0.1, "I": 4, "l": 20}
#: Weight of a face neighbour in the separable MRF kernel (edges a^2, corners a^3).
NEIGHBOUR_WEIGHT = 0.7
#: Pairs of classes whose partial-volume mixtures are modelled (cluster indices).
PAIRS = ((0, 1), (1, 2), (0, 2))
N_COMPONENTS = 3 + len(PAIRS)
#: Class content of each component for the MRF prior (pure: one class; mixture: half of each).
_COMPONENT_CLASSES = np.vstack([np.eye(3), *[(np.eye(3)[a] + np.eye(3)[b]) / 2 for a, b in PAIRS]]).astype(np.float32)
#: A mixture of two classes is left out when the third class's mean projects inside the segment
#: between them and lies within this many noise SDs of it: the two cannot be told apart.
MIN_PAIR_SEPARATION = 3.0
#: The M-step uses at most this many voxels (a fixed random subset; plenty for 3 means and one covariance).
M_STEP_SAMPLES = 100_000
#: Channels on which lesions (MS plaques, oedema, tumour, enhancement) are brighter than normal tissue.
HYPERINTENSE_CHANNELS = (Contrast.T2, Contrast.FLAIR, Contrast.PD, Contrast.T1CE)


@dataclass(frozen=True)
class HmrfSettings:
    """Parameters of the embedded HMRF-EM segmentation (see the module docstring).

    Attributes:
        beta: MRF strength per unit neighbour weight while the parameters are estimated (FAST's ``-H``).
        label_beta: MRF strength for the final fractions and labels (parameters fixed).
        label_rounds: mean-field rounds at ``label_beta``.
        iterations: maximum EM rounds on the 2x subsampled grid.
        fine_iterations: EM rounds at full resolution after that.
        refine_iterations: EM rounds after the abnormal voxels are left out.
        tolerance: stop when no class mean moves by more than this (relative).
        bias_correction: run N4 on every channel first.
        seed: random seed of the k-means and M-step subsamples.
    """

    beta: float = 0.1
    label_beta: float = 0.8
    label_rounds: int = 4
    iterations: int = 20
    fine_iterations: int = 3
    refine_iterations: int = 2
    tolerance: float = 1e-3
    bias_correction: bool = True
    seed: int = 0


@dataclass(frozen=True)
class AbnormalSettings:
    """How the abnormal class is found (see the module docstring).

    Attributes:
        outlier_p: tail probability of the chi-square test on the distance to the tissue model (seeds).
        outlier_grow_p: the same for the voxels a seed may grow into.
        flair_seed_z: robust FLAIR z above the brighter of GM and WM for a seed.
        flair_grow_z: the same for the voxels a seed may grow into (and for "bright" outliers).
        wm_context_mm: Gaussian SD (mm) of the neighbourhood whose normal tissue must be mostly WM around a seed.
        wm_context: the WM share of that neighbourhood a seed needs.
        edge_mm: ignore candidates this close to the brain-mask border.
        min_lesion_mm3: smallest connected component kept.
        max_csf_surround: drop components whose surrounding voxels are more CSF than this share.
    """

    outlier_p: float = 1e-4
    outlier_grow_p: float = 1e-2
    flair_seed_z: float = 4.0
    flair_grow_z: float = 2.0
    wm_context_mm: float = 2.0
    wm_context: float = 0.6
    edge_mm: float = 2.0
    min_lesion_mm3: float = 10.0
    max_csf_surround: float = 0.3


@dataclass
class TissueResult:
    """Tissue masks on the first input's grid.

    Attributes:
        pve: ``"CSF"``, ``"GM"``, ``"WM"`` -> float32 partial-volume map; they sum to 1 inside the
            brain mask and are 0 outside.
        labels: uint8: 0 background, 1 CSF, 2 GM, 3 WM, 4 abnormal.
        abnormal: uint8 0/1 mask of the abnormal class, or ``None`` when it was not requested or
            the inputs cannot show it (one channel other than FLAIR).
        method: ``"fsl-fast"`` or ``"embedded-hmrf"``.
        details: JSON-ready parameters, class statistics and timings.
    """

    pve: dict[str, Volume]
    labels: Volume
    abnormal: Volume | None
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (no image data)."""
        return {"method": self.method, "details": self.details}


# --------------------------------------------------------------------------------------------------
# Contrast handling


def _contrast_of(volume: Volume) -> Contrast:
    return volume.contrast if isinstance(volume.contrast, Contrast) else Contrast.T1


def primary_index(volumes: list[Volume]) -> int:
    """Index of the volume whose contrast names the classes (T1 first, then T1ce, T2, PD, FLAIR, TOF)."""
    contrasts = [_contrast_of(v) for v in volumes]
    for wanted in PRIMARY_ORDER:
        if wanted in contrasts:
            return contrasts.index(wanted)
    return 0


def class_order(means: np.ndarray, contrast: Contrast) -> list[int]:
    """Indices of the clusters that are CSF, GM and WM, from their three means on ``contrast``."""
    ascending = [int(i) for i in np.argsort(np.asarray(means, dtype=np.float64), kind="stable")]
    if contrast in (Contrast.T2, Contrast.PD):
        return ascending[::-1]
    if contrast is Contrast.FLAIR:
        csf, mid, top = ascending
        return [csf, top, mid]  # GM is brighter than WM on FLAIR
    return ascending  # T1, T1ce (and TOF, whose background tissue behaves like T1)


def _abnormal_possible(contrasts: list[Contrast]) -> bool:
    """Lesions are outliers only against two or more channels, or bright on FLAIR."""
    return len(contrasts) >= 2 or Contrast.FLAIR in contrasts


# --------------------------------------------------------------------------------------------------
# Grid helpers


def _box(mask: np.ndarray, pad: int = 2) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(
        slice(max(0, int(c.min()) - pad), min(n, int(c.max()) + pad + 1))
        for c, n in zip(coords, mask.shape, strict=True)
    )


def _subsampled(mask: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask on every ``step``-th voxel, and the columns (in ``mask`` order) of those voxels."""
    rows = np.full(mask.shape, -1, dtype=np.int64)
    rows[mask] = np.arange(int(mask.sum()))
    coarse = rows[::step, ::step, ::step]
    coarse_mask = coarse >= 0
    return coarse_mask, coarse[coarse_mask]


def _neighbour_sum(volume: np.ndarray, a: float = NEIGHBOUR_WEIGHT) -> np.ndarray:
    """sum_j w_ij v_j over the 26 neighbours, w = a^(axes that differ); the centre is excluded."""
    kernel = np.array([a, 1.0, a], dtype=np.float32)
    out = volume
    for axis in range(3):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0)
    return out - volume


def _scatter(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(K, n) values of the voxels in ``mask`` -> (K, *mask.shape) float32, zero elsewhere."""
    out = np.zeros((len(values), mask.size), dtype=np.float32)
    out[:, np.flatnonzero(mask)] = values
    return out.reshape(len(values), *mask.shape)


# --------------------------------------------------------------------------------------------------
# Gaussian partial-volume model. Arrays are component- or channel-major, (K, n) and (C, n): numpy
# reduces across a short leading axis far faster than across a short trailing one.


@dataclass
class _Model:
    """Three pure classes (means) sharing one covariance (noise and texture)."""

    means: np.ndarray  # (3, C)
    cov: np.ndarray  # (C, C)

    def whitener(self) -> tuple[np.ndarray, float]:
        """(W, log det cov) with W cov W^T = I."""
        chol = np.linalg.cholesky(self.cov)
        return np.linalg.inv(chol), 2.0 * float(np.log(np.diag(chol)).sum())

    def active_pairs(self) -> list[bool]:
        """Which of :data:`PAIRS` are modelled (see :data:`MIN_PAIR_SEPARATION`)."""
        w, _ = self.whitener()
        centres = self.means @ w.T
        active = []
        for a, b in PAIRS:
            third = centres[3 - a - b] - centres[b]
            u = centres[a] - centres[b]
            t = float(third @ u / max(float(u @ u), 1e-12))
            hidden = 0 < t < 1 and float(np.linalg.norm(third - t * u)) < MIN_PAIR_SEPARATION
            active.append(not hidden)
        return active

    def log_weights(self) -> np.ndarray:
        """(6, 1) log prior weights: equal over the pure classes and the modelled mixtures."""
        used = np.array([True, True, True, *self.active_pairs()])
        return np.where(used, -np.log(used.sum()), -np.inf).astype(np.float32)[:, None]


def _regularised(cov: np.ndarray, scale: np.ndarray) -> np.ndarray:
    cov = 0.5 * (cov + cov.T)
    return cov + np.diag((1e-3 * scale) ** 2 + 1e-12)


def _log_phi_difference(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """log(Phi(upper) - Phi(lower)) for upper > lower (float32), on the side of 0 where it is accurate."""
    flip = (upper + lower) > 0  # both mostly positive: use Phi(-lower) - Phi(-upper)
    a = np.where(flip, -lower, upper)
    b = np.where(flip, -upper, lower)
    return np.log(np.maximum(special.ndtr(a) - special.ndtr(b), np.float32(1e-30)))


def _component_loglik(x: np.ndarray, model: _Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per voxel: log-likelihoods (6, n) of the components (-inf for mixtures left out), E[fraction
    of a] per pair (3, n), and squared whitened distances (n,) to the tissue model: the nearest pure
    mean, modelled mixture segment, or point inside the triangle of the means (three tissues).

    A mixture of classes a and b is ``t mu_a + (1 - t) mu_b`` plus the shared Gaussian noise, with
    ``t`` uniform on [0, 1]. In whitened coordinates, with ``u = mu_a - mu_b``, ``L = |u|``,
    ``tau`` the coordinate of ``x - mu_b`` along ``u / L`` and ``r`` its distance from that line,
    the integral over t is closed-form::

        p(x) = N_perp(r) * sqrt(2 pi) / L * (Phi(tau) - Phi(tau - L))
        E[t | x] = (tau - E[s]) / L,  s ~ N(0, 1) truncated to [tau - L, tau]
    """
    c, n = x.shape
    w, logdet = model.whitener()
    y = w.astype(np.float32) @ x  # (C, n)
    centres = (model.means @ w.T).astype(np.float32)  # (3, C)
    yy = (y * y).sum(0)
    const = np.float32(0.5 * (logdet + c * math.log(2 * math.pi)))
    ll = np.empty((N_COMPONENTS, n), dtype=np.float32)
    t_hat = np.full((len(PAIRS), n), 0.5, dtype=np.float32)
    projections = centres @ y  # (3, n)
    squared = []
    for k in range(3):
        d2 = yy - 2 * projections[k] + np.float32(centres[k] @ centres[k])
        np.maximum(d2, 0, out=d2)
        squared.append(d2)
        ll[k] = -0.5 * d2 - const
    nearest = np.minimum(np.minimum(squared[0], squared[1]), squared[2])
    half_log_2pi = np.float32(0.5 * math.log(2 * math.pi))
    for p, ((a, b), active) in enumerate(zip(PAIRS, model.active_pairs(), strict=True)):
        if not active:
            ll[3 + p] = -np.inf
            continue
        u = centres[a] - centres[b]
        length = max(float(np.linalg.norm(u)), 1e-6)
        tau = (projections[a] - projections[b] - np.float32(centres[b] @ u)) / np.float32(length)
        perp = np.maximum(squared[b] - tau**2, 0)
        inside = (tau > 0) & (tau < length)
        np.minimum(nearest, np.where(inside, perp, np.inf).astype(np.float32), out=nearest)
        base = -0.5 * perp - const + half_log_2pi - np.float32(math.log(length))
        t_hat[p] = np.clip(tau / np.float32(length), 0.0, 1.0)
        # log(Phi(tau) - Phi(tau - L)) is 0 to float32 precision well inside the segment, and the
        # component is negligible far beyond its ends (a pure class is then much closer): evaluate
        # the normal CDF only where it matters.
        relevant = (tau > -6.0) & (tau < length + 6.0)
        edge = relevant & ((tau < 6.0) | (tau > length - 6.0))
        outside = ~relevant
        base[outside] = -np.float32(1e4) - 0.5 * np.minimum(squared[a], squared[b])[outside]
        if edge.any():
            te = tau[edge]
            lm = _log_phi_difference(te, te - np.float32(length))
            base[edge] += lm
            # Truncated-normal mean of s on [tau - L, tau]: (phi(tau - L) - phi(tau)) / (Phi(tau) - Phi(tau - L)).
            mean_s = (np.exp(-0.5 * (te - np.float32(length)) ** 2 - lm) - np.exp(-0.5 * te**2 - lm)) / np.float32(
                math.sqrt(2 * math.pi)
            )
            t_hat[p, edge] = np.clip((te - mean_s) / np.float32(length), 0.0, 1.0)
        ll[3 + p] = base
    if c >= 2:
        # Inside the triangle of the three means the distance is the one to its plane (with two
        # channels: 0). Barycentric coordinates by least squares.
        edges = np.stack([centres[0] - centres[2], centres[1] - centres[2]], axis=1)  # (C, 2)
        offset = y - centres[2][:, None]
        coords = np.linalg.pinv(edges.astype(np.float64)).astype(np.float32) @ offset  # (2, n)
        within = (coords >= 0).all(0) & (coords.sum(0) <= 1)
        if within.any():
            residual = offset[:, within] - edges @ coords[:, within]
            nearest[within] = np.minimum(nearest[within], (residual * residual).sum(0))
    return ll, t_hat, nearest


def _fractions(q: np.ndarray, t_hat: np.ndarray) -> np.ndarray:
    """Expected class fractions (3, n) from component posteriors (6, n) and the mixtures' fractions."""
    s = q[:3].copy()
    for p, (a, b) in enumerate(PAIRS):
        s[a] += q[3 + p] * t_hat[p]
        s[b] += q[3 + p] * (1.0 - t_hat[p])
    return s


def _m_step(x: np.ndarray, q: np.ndarray, t_hat: np.ndarray, cols: np.ndarray | None, previous: _Model) -> _Model:
    """Means by joint least squares over pure and mixed voxels; the shared covariance from the residuals.

    ``cols`` (optional) selects the voxels that enter the estimate. Sums go through ``einsum``
    rather than BLAS: these small products do not pay for BLAS threads on a busy machine.
    """
    if cols is not None:
        x, q, t_hat = x[:, cols], q[:, cols], t_hat[:, cols]
    xd = x.astype(np.float64)
    qd = q.astype(np.float64)
    td = t_hat.astype(np.float64)
    # Every voxel is a known mix of the three means (a pure class, or fraction t of class a and
    # 1 - t of class b), weighted by its component posteriors.
    gram = np.diag(qd[:3].sum(1))
    rhs = np.einsum("kn,cn->kc", qd[:3], xd)
    pairs = [(p, a, b) for p, (a, b) in enumerate(PAIRS) if qd[3 + p].any()]
    for p, a, b in pairs:
        rt, rs = qd[3 + p] * td[p], qd[3 + p] * (1 - td[p])
        gram[a, a] += np.einsum("n,n->", rt, td[p])
        gram[b, b] += np.einsum("n,n->", rs, 1 - td[p])
        gram[a, b] += np.einsum("n,n->", rt, 1 - td[p])
        gram[b, a] = gram[a, b]
        rhs[a] += np.einsum("n,cn->c", rt, xd)
        rhs[b] += np.einsum("n,cn->c", rs, xd)
    means = np.linalg.solve(gram, rhs) if np.linalg.cond(gram) < 1e8 else previous.means.copy()
    # Residuals of every voxel from its components' expected positions (pure mean or mixture point).
    scatter = np.zeros((x.shape[0], x.shape[0]))
    for k in range(3):
        diff = xd - means[k][:, None]
        scatter += np.einsum("cn,dn->cd", diff * qd[k], diff)
    for p, a, b in pairs:
        diff = xd - (td[p] * means[a][:, None] + (1 - td[p]) * means[b][:, None])
        scatter += np.einsum("cn,dn->cd", diff * qd[3 + p], diff)
    scale = np.maximum(np.abs(xd).mean(1), 1e-6)
    return _Model(means, _regularised(scatter / max(float(qd.sum()), 1e-9), scale))


def _posteriors(logp: np.ndarray, s: np.ndarray | None, mask: np.ndarray, beta: float) -> np.ndarray:
    """Component posteriors (6, n) from log-likelihoods plus log priors (6, n) and the mean-field
    Potts term ``beta * sum_j w_ij <c_m, s_j>`` over the neighbours' class fractions ``s_j``."""
    logp = logp.copy()
    if s is not None and beta > 0:
        index = np.flatnonzero(mask)
        grid = _scatter(s, mask)
        neighbours = np.stack([_neighbour_sum(grid[k]).reshape(-1)[index] for k in range(3)])
        logp += np.float32(beta) * (_COMPONENT_CLASSES @ neighbours)
    logp -= logp.max(axis=0)
    np.exp(logp, out=logp)
    logp /= logp.sum(axis=0)
    return logp


def _m_step_columns(n: int, keep: np.ndarray | None, seed: int) -> np.ndarray | None:
    cols = np.arange(n) if keep is None else np.flatnonzero(keep)
    if len(cols) > M_STEP_SAMPLES:
        return np.sort(np.random.default_rng(seed).choice(cols, size=M_STEP_SAMPLES, replace=False))
    return None if keep is None else cols


def hmrf_em(
    x: np.ndarray,
    mask: np.ndarray,
    model: _Model,
    beta: float,
    iterations: int,
    tolerance: float,
    *,
    keep: np.ndarray | None = None,
    s_init: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[_Model, np.ndarray, int]:
    """EM with a mean-field Potts prior; returns the model, the last class fractions (3, n) and the rounds run.

    Args:
        x: (C, n) intensities of the voxels in ``mask`` (in ``np.flatnonzero(mask)`` order).
        mask: 3D bool array.
        model: initial parameters.
        beta: MRF strength per unit neighbour weight.
        iterations: maximum EM rounds.
        tolerance: relative change of the means at which to stop.
        keep: optional bool (n,) of the voxels that enter the M-step.
        s_init: optional class fractions (3, n) for the first round's prior.
        seed: seed of the M-step subsample.
    """
    scale = np.maximum(np.abs(x).mean(1).astype(np.float64), 1e-6)
    cols = _m_step_columns(x.shape[1], keep, seed)
    s = s_init
    rounds = 0
    while rounds < iterations:
        rounds += 1
        loglik, t_hat, _ = _component_loglik(x, model)
        q = _posteriors(loglik + model.log_weights(), s, mask, beta)
        s = _fractions(q, t_hat)
        new = _m_step(x, q, t_hat, cols, model)
        shift = float(np.max(np.abs(new.means - model.means) / scale))
        model = new
        if shift < tolerance:
            break
    assert s is not None
    return model, s, rounds


def label_fractions(
    x: np.ndarray, mask: np.ndarray, model: _Model, beta: float, rounds: int, s_init: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Class fractions (3, n) after ``rounds`` mean-field updates at ``beta`` with the model fixed,
    and the squared whitened distance of each voxel to the tissue model (n,)."""
    loglik, t_hat, distance = _component_loglik(x, model)
    loglik += model.log_weights()
    s = s_init
    for _ in range(max(rounds, 1)):
        s = _fractions(_posteriors(loglik, s, mask, beta), t_hat)
    assert s is not None
    return s, distance


def _kmeans(z: np.ndarray, init: np.ndarray, iterations: int = 20) -> np.ndarray:
    centres = init.copy()
    for _ in range(iterations):
        nearest = ((z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.array([z[nearest == k].mean(0) if np.any(nearest == k) else centres[k] for k in range(len(centres))])
        if np.allclose(new, centres, rtol=0, atol=1e-6):
            break
        centres = new
    return centres


def _initial_model(x: np.ndarray, primary: int, seed: int) -> _Model:
    """K-means (3 clusters, standardised channels) started at the 15/50/85th percentiles of the primary channel."""
    rng = np.random.default_rng(seed)
    sample = x[:, rng.choice(x.shape[1], size=min(x.shape[1], 200_000), replace=False)].T.astype(np.float64)
    z = sample / (sample.std(0) + 1e-9)
    order = np.argsort(sample[:, primary], kind="stable")
    window = max(1, len(order) // 50)
    starts = [int(p * len(order)) for p in (0.15, 0.5, 0.85)]
    centres = _kmeans(z, np.array([z[order[max(0, i - window) : i + window]].mean(0) for i in starts]))
    nearest = ((z[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    means = []
    scatter = np.zeros((x.shape[0], x.shape[0]))
    for k in range(3):
        members = sample[nearest == k]
        if len(members) < 10:
            raise InputError(
                "the brain holds too few distinct intensities for three tissue classes",
                "check the inputs and the brain mask",
            )
        means.append(members.mean(0))
        diff = members - members.mean(0)
        scatter += diff.T @ diff
    return _Model(np.array(means), _regularised(scatter / len(sample), np.abs(sample).mean(0)))


def _model_from_fractions(x: np.ndarray, s: np.ndarray) -> _Model:
    """Class means by least squares of the intensities on given fractions (3, n), noise from the residuals."""
    sd, xd = s.astype(np.float64), x.astype(np.float64)
    means = np.linalg.lstsq(sd.T, xd.T, rcond=None)[0]  # (3, C)
    residual = xd - means.T @ sd
    return _Model(means, _regularised(residual @ residual.T / x.shape[1], np.abs(xd).mean(1)))


# --------------------------------------------------------------------------------------------------
# Abnormal class


def _robust_stats(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    return median, max(mad, 1e-6 * max(abs(median), 1e-6))


def _class_spread(x: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and covariance of mostly pure voxels of a class, trimmed once at the 97.5 % quantile."""
    values = x[:, members].astype(np.float64)
    channels = x.shape[0]
    if values.shape[1] < 50:
        return None
    mean = values.mean(1)
    cov = np.atleast_2d(np.cov(values)) + np.eye(channels) * 1e-9
    diff = values - mean[:, None]
    d2 = (diff * (np.linalg.inv(cov) @ diff)).sum(0)
    kept = values[:, d2 <= stats.chi2.ppf(0.975, df=channels)]
    if kept.shape[1] < 50:
        return mean, cov
    return kept.mean(1), np.atleast_2d(np.cov(kept)) + np.eye(channels) * 1e-9


def _smooth_share(
    part: np.ndarray, whole: np.ndarray, sigma_mm: float, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian-weighted share of ``part`` among the ``whole`` voxels around each voxel (normalised convolution)."""
    sigma = [sigma_mm / s for s in spacing]
    num = ndimage.gaussian_filter((part & whole).astype(np.float32), sigma)
    return num / np.maximum(ndimage.gaussian_filter(whole.astype(np.float32), sigma), 1e-3)


def find_abnormal(
    x: np.ndarray,
    mask: np.ndarray,
    model: _Model,
    distance: np.ndarray,
    fractions: np.ndarray,
    contrasts: list[Contrast],
    names: list[int],
    spacing: tuple[float, float, float],
    settings: AbnormalSettings,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Abnormal voxels (bool, (n,)) among the columns of ``x`` and what was found, for the details.

    Args:
        x: (C, n) channel intensities in ``mask`` order.
        mask: 3D bool (the brain, in its box).
        model: fitted classes (cluster order).
        distance: (n,) squared whitened distance to the tissue model.
        fractions: (3, n) class fractions (cluster order).
        contrasts: per channel.
        names: cluster indices of CSF, GM, WM.
        spacing: voxel size (mm).
        settings: thresholds.
    """
    channels = x.shape[0]
    hard = fractions.argmax(0)
    # Pure voxels vary more than the shared noise model says (CSF above all): also measure the
    # distance to each class's own spread, from its mostly pure voxels.
    distance = distance.copy()
    spreads = {}
    for j, k in enumerate(names):
        spread = _class_spread(x, fractions[k] >= 0.8)
        if spread is None:
            continue
        mean, cov = spread
        d = np.linalg.cholesky(np.linalg.inv(cov)).T.astype(np.float32) @ (x - mean.astype(np.float32)[:, None])
        np.minimum(distance, (d * d).sum(0), out=distance)
        spreads[CLASS_NAMES[j]] = [round(float(v), 5) for v in np.sqrt(np.diag(cov))]
    seed_threshold = float(stats.chi2.isf(settings.outlier_p, df=channels))
    grow_threshold = float(stats.chi2.isf(settings.outlier_grow_p, df=channels))
    info: dict[str, Any] = {
        "chi2_seed_threshold": round(seed_threshold, 3),
        "chi2_grow_threshold": round(grow_threshold, 3),
        "pure_class_sd": spreads,
        "outliers_raw": int((distance > seed_threshold).sum()),
    }
    tissue = hard != names[0]
    if Contrast.FLAIR in contrasts:
        # Lesions (MS plaques, oedema, tumour) are bright on FLAIR: robust z against the pure
        # (>= 80 %) voxels of the brighter of GM and WM. Outliers that are not FLAIR-bright are
        # vessels, flow artefacts or partial volume with CSF.
        c = contrasts.index(Contrast.FLAIR)
        brightest = max(names[1:], key=lambda k: model.means[k][c])
        reference = fractions[brightest] >= 0.8
        if reference.sum() < 50:
            reference = hard == brightest
        median, sigma = _robust_stats(x[c, reference])
        z = (x[c] - median) / sigma
        bright = z > settings.flair_grow_z
        seeds = ((distance > seed_threshold) & bright) | ((z > settings.flair_seed_z) & tissue)
        grow = ((distance > grow_threshold) & bright) | (bright & tissue)
        info["flair_reference"] = CLASS_NAMES[names.index(brightest)]
        info["flair_median_sd"] = [round(median, 5), round(sigma, 5)]
    else:
        # Without FLAIR: outliers brighter than GM and WM on a channel where lesions are bright
        # (T2, PD, T1ce); dark ones there are vessels (flow voids), calcification or air.
        bright = np.zeros(x.shape[1], dtype=bool)
        for c, contrast in enumerate(contrasts):
            if contrast in HYPERINTENSE_CHANNELS:
                bright |= x[c] > max(model.means[names[1]][c], model.means[names[2]][c])
        seeds = (distance > seed_threshold) & bright
        grow = (distance > grow_threshold) & bright
    info["seeds_raw"] = int(seeds.sum())

    away = ndimage.distance_transform_edt(mask, sampling=spacing) > settings.edge_mm
    seed_grid = _scatter(seeds[None], mask)[0].astype(bool) & away
    grow_grid = _scatter(grow[None], mask)[0].astype(bool) & away
    # Seeds must lie in white-matter surroundings: most of the normal (non-candidate) tissue within
    # a few mm is WM. This drops FLAIR-bright cortex (insula, hippocampus) and vessels in sulci.
    wm_grid = _scatter((hard == names[2])[None], mask)[0].astype(bool)
    seed_grid &= _smooth_share(wm_grid, mask & ~grow_grid, settings.wm_context_mm, spacing) >= settings.wm_context
    grow_grid |= seed_grid
    # Hysteresis: keep the connected regions of the loose map that contain a seed.
    connectivity = np.ones((3, 3, 3), dtype=bool)
    regions, _ = ndimage.label(grow_grid, structure=connectivity)
    hit = np.unique(regions[seed_grid])
    cleaned = np.isin(regions, hit[hit > 0])
    labels, count = ndimage.label(cleaned, structure=connectivity)
    voxel_mm3 = float(np.prod(spacing))
    info["components_raw"] = int(count)
    info["components"] = 0
    if count:
        ids = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(cleaned, labels, index=ids) * voxel_mm3
        # Components mostly surrounded by CSF are choroid plexus or vessels in the ventricles and
        # cisterns, not lesions (which lie in or against the parenchyma).
        csf_grid = _scatter((hard == names[0])[None], mask)[0].astype(bool)
        shell_owner = ndimage.grey_dilation(labels, size=(3, 3, 3))
        shell = (labels == 0) & (shell_owner > 0) & mask
        shell_size = ndimage.sum_labels(shell, shell_owner, index=ids)
        csf_share = ndimage.sum_labels(shell & csf_grid, shell_owner, index=ids) / np.maximum(shell_size, 1)
        small = sizes < settings.min_lesion_mm3
        in_csf = ~small & (csf_share > settings.max_csf_surround)
        # Cavities enclosed by a lesion (a necrotic core inside an enhancing rim) belong to it.
        cleaned = ndimage.binary_fill_holes(np.isin(labels, ids[~small & ~in_csf])) & mask
        info.update(
            components=int((~small & ~in_csf).sum()), dropped_small=int(small.sum()), dropped_in_csf=int(in_csf.sum())
        )
    abnormal = cleaned.reshape(-1)[np.flatnonzero(mask)]
    info["volume_ml"] = round(float(abnormal.sum()) * voxel_mm3 / 1000.0, 3)
    return abnormal, info


# --------------------------------------------------------------------------------------------------
# Shared preparation and output


def _prepare_channels(
    volumes: list[Volume], brain: np.ndarray, box: tuple[slice, ...], mask: np.ndarray
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(C, n) N4-corrected intensities of the brain voxels, each channel divided by its median there."""
    from mrsynth_cli.preprocessing.bias import n4_bias_correct

    index = np.flatnonzero(mask)
    channels, details = [], []
    for volume in volumes:
        result = n4_bias_correct(volume, brain)
        details.append(result.details)
        values = result.corrected.data[box].reshape(-1)[index].astype(np.float32)
        median = float(np.median(values))
        if not np.isfinite(median) or median <= 0:
            median = float(np.mean(np.abs(values))) or 1.0
        channels.append(values / np.float32(median))
    return np.stack(channels), details


def _assemble(
    s: np.ndarray, abnormal_flat: np.ndarray | None, brain: np.ndarray, box: tuple[slice, ...], mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Full-grid PVE maps (3, X, Y, Z), labels and abnormal mask from CSF/GM/WM fractions (3, n) in the box."""
    s = s / np.maximum(s.sum(0), 1e-12)
    label_flat = (s.argmax(0) + 1).astype(np.float32)
    if abnormal_flat is not None:
        label_flat[abnormal_flat] = LABEL_VALUES["abnormal"]
    pve = np.zeros((3, *brain.shape), dtype=np.float32)
    pve[(slice(None), *box)] = _scatter(s, mask)
    labels = np.zeros(brain.shape, dtype=np.uint8)
    labels[box] = _scatter(label_flat[None], mask)[0].astype(np.uint8)
    abnormal_mask = None if abnormal_flat is None else (labels == LABEL_VALUES["abnormal"]).astype(np.uint8)
    return pve, labels, abnormal_mask


def _class_details(model: _Model, s: np.ndarray, names: list[int], spacing: tuple[float, float, float]) -> dict:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        name: {
            "mean": [round(float(v), 5) for v in model.means[k]],
            "volume_ml": round(float(s[j].sum()) * voxel_ml, 2),
        }
        for j, (name, k) in enumerate(zip(CLASS_NAMES, names, strict=True))
    }


# --------------------------------------------------------------------------------------------------
# Embedded backend


def _segment_embedded(
    volumes: list[Volume],
    brain: np.ndarray,
    abnormal: bool,
    hmrf: HmrfSettings,
    abnormal_settings: AbnormalSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(pve (3, X, Y, Z) in CSF/GM/WM order, labels, abnormal mask or None, details)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    contrasts = [_contrast_of(v) for v in volumes]
    details: dict[str, Any] = {
        "channels": [str(c) for c in contrasts],
        "assumed_t1": [v.name for v in volumes if not isinstance(v.contrast, Contrast)],
    }
    box = _box(brain)
    mask = brain[box]
    if hmrf.bias_correction:
        x, details["bias_correction"] = _prepare_channels(volumes, brain, box, mask)
    else:
        index = np.flatnonzero(mask)
        x = np.stack([v.data[box].reshape(-1)[index].astype(np.float32) for v in volumes])
        x /= np.maximum(np.median(x, axis=1, keepdims=True), 1e-12)
    timings["bias_correction"] = round(time.perf_counter() - started, 2)
    primary = primary_index(volumes)

    t0 = time.perf_counter()
    model = _initial_model(x, primary, hmrf.seed)
    # Coarse to fine: most EM rounds on every second voxel along each axis (an eighth of the
    # voxels, neighbours 2 voxels apart), then a few at full resolution.
    coarse_mask, coarse_cols = _subsampled(mask, 2)
    model, _, coarse_rounds = hmrf_em(
        x[:, coarse_cols], coarse_mask, model, hmrf.beta, hmrf.iterations, hmrf.tolerance, seed=hmrf.seed
    )
    model, s, rounds = hmrf_em(x, mask, model, hmrf.beta, hmrf.fine_iterations, hmrf.tolerance, seed=hmrf.seed)
    s, distance = label_fractions(x, mask, model, hmrf.label_beta, hmrf.label_rounds, s)
    details["em_rounds"] = {"coarse": coarse_rounds, "fine": rounds}
    names = class_order(model.means[:, primary], contrasts[primary])
    abnormal_flat = None
    if abnormal and _abnormal_possible(contrasts):
        abnormal_flat, details["abnormal"] = find_abnormal(
            x, mask, model, distance, s, contrasts, names, volumes[0].spacing, abnormal_settings
        )
        if abnormal_flat.any() and hmrf.refine_iterations > 0:
            model, s, rounds = hmrf_em(
                x, mask, model, hmrf.beta, hmrf.refine_iterations, hmrf.tolerance,
                keep=~abnormal_flat, s_init=s, seed=hmrf.seed,
            )
            s, _ = label_fractions(x, mask, model, hmrf.label_beta, hmrf.label_rounds, s)
            details["em_rounds"]["refine"] = rounds
            names = class_order(model.means[:, primary], contrasts[primary])
    elif abnormal:
        details["abnormal"] = {"skipped": "needs two or more channels, or FLAIR"}
    timings["hmrf_em"] = round(time.perf_counter() - t0, 2)
    s = s[names]
    pve, labels, abnormal_mask = _assemble(s, abnormal_flat, brain, box, mask)
    details["classes"] = _class_details(model, s, names, volumes[0].spacing)
    details["active_mixtures"] = [
        f"{CLASS_NAMES[names.index(a)]}-{CLASS_NAMES[names.index(b)]}"
        for (a, b), active in zip(PAIRS, model.active_pairs(), strict=True)
        if active
    ]
    details["noise_sd"] = [round(float(v), 5) for v in np.sqrt(np.diag(model.cov))]
    details["intensity_units"] = "each channel divided by its median inside the brain mask (after N4)"
    details["primary_channel"] = str(contrasts[primary])
    details["timings_s"] = timings
    return pve, labels, abnormal_mask, details


# --------------------------------------------------------------------------------------------------
# FSL FAST backend


def _run_fast(volumes: list[Volume], brain: np.ndarray, work: Path) -> tuple[np.ndarray, list[str]]:
    """Run FAST on the brain-masked volumes in ``work``; its PVE maps (3, X, Y, Z) in FAST's order and the command."""
    from fsl.utils.run import FSLNotPresent
    from fsl.wrappers import fast

    images = []
    for j, volume in enumerate(volumes):
        image = nib.Nifti1Image(np.where(brain, volume.data, 0).astype(np.float32), volume.affine)
        image.set_sform(volume.affine, 1)
        image.set_qform(volume.affine, 1)
        path = work / f"channel{j}.nii.gz"
        nib.save(image, str(path))
        images.append(str(path))
    prefix = work / "fast"
    options: dict[str, Any] = {"n": 3, **FAST_OPTIONS}
    if len(volumes) == 1:
        options["t"] = FAST_TYPE.get(_contrast_of(volumes[0]), 1)
    else:
        options["S"] = len(volumes)
    names = ", ".join(v.name for v in volumes)
    hint = "check the inputs and $FSLDIR/bin/fast, or use --segmentation embedded"
    try:
        with fsl_output_type("NIFTI_GZ"):
            outputs = fast(images, out=str(prefix), exitcode=True, silent=True, **options)
        # fslpy returns a Results dict whose .stdout is the runner's (stdout, stderr, exit code).
        _, stderr, code = outputs.stdout
    except FSLNotPresent as exc:
        raise RuntimeFailure(f"FAST was requested for {names} but FSL is not set up ({exc})", hint) from exc
    except (OSError, subprocess.CalledProcessError, RuntimeError, AssertionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RuntimeFailure(f"FAST could not be run on {names} ({first[:160]})", hint) from exc
    if code != 0:
        last = next((line for line in reversed(str(stderr or "").splitlines()) if line.strip()), "no message")
        raise RuntimeFailure(f"FAST failed on {names} (exit code {code}: {last[:160]})", hint)
    maps = []
    for k in range(3):
        path = work / f"fast_pve_{k}.nii.gz"
        try:
            data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            raise RuntimeFailure(f"FAST did not write a readable {path.name} for {names}", hint) from exc
        if data.shape != brain.shape or not np.all(np.isfinite(data)):
            raise RuntimeFailure(f"FAST wrote an invalid {path.name} ({data.shape}) for {names} on {brain.shape}", hint)
        maps.append(data)
    return np.stack(maps), [str(find_fsl_tool("fast")), *[f"-{k} {v}" for k, v in options.items()]]


def _segment_fast(
    volumes: list[Volume],
    brain: np.ndarray,
    abnormal: bool,
    abnormal_settings: AbnormalSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(pve (3, X, Y, Z) in CSF/GM/WM order, labels, abnormal mask or None, details) from FSL FAST."""
    started = time.perf_counter()
    contrasts = [_contrast_of(v) for v in volumes]
    with tempfile.TemporaryDirectory(prefix="mrsynth_fast_") as work:
        maps, command = _run_fast(volumes, brain, Path(work))
    timings = {"fast": round(time.perf_counter() - started, 2)}
    box = _box(brain)
    mask = brain[box]
    index = np.flatnonzero(mask)
    s = maps[(slice(None), *box)].reshape(3, -1)[:, index]
    total = s.sum(0)
    if np.any(total <= 0):
        # Brain voxels FAST left out (zero intensity): the fractions of the nearest voxel it labelled.
        holes = np.zeros(mask.shape, dtype=bool)
        holes.reshape(-1)[index] = total <= 0
        nearest = ndimage.distance_transform_edt(holes | ~mask, return_distances=False, return_indices=True)
        flat_nearest = np.ravel_multi_index(tuple(nearest), mask.shape).reshape(-1)[index]
        lookup = np.full(mask.size, -1, dtype=np.int64)
        lookup[index] = np.arange(len(index))
        source = lookup[flat_nearest]
        fill = (total <= 0) & (source >= 0)
        s[:, fill] = s[:, source[fill]]
    s /= np.maximum(s.sum(0), 1e-12)
    primary = primary_index(volumes)
    raw = volumes[primary].data[box].reshape(-1)[index].astype(np.float64)
    names = class_order((s @ raw) / np.maximum(s.sum(1), 1e-12), contrasts[primary])
    details: dict[str, Any] = {"channels": [str(c) for c in contrasts], "fast_command": command, "fast_order": names}
    abnormal_flat = None
    if abnormal and _abnormal_possible(contrasts):
        t0 = time.perf_counter()
        x, details["bias_correction"] = _prepare_channels(volumes, brain, box, mask)
        model = _model_from_fractions(x, s)
        _, _, distance = _component_loglik(x, model)
        abnormal_flat, details["abnormal"] = find_abnormal(
            x, mask, model, distance, s, contrasts, names, volumes[0].spacing, abnormal_settings
        )
        details["classes"] = _class_details(model, s[names], names, volumes[0].spacing)
        timings["abnormal"] = round(time.perf_counter() - t0, 2)
    elif abnormal:
        details["abnormal"] = {"skipped": "needs two or more channels, or FLAIR"}
    pve, labels, abnormal_mask = _assemble(s[names], abnormal_flat, brain, box, mask)
    details["timings_s"] = timings
    return pve, labels, abnormal_mask, details


# --------------------------------------------------------------------------------------------------
# Public entry point


def check_method(method: str) -> None:
    """Raise :class:`InputError` for an unknown method, or ``fsl`` without FAST (cheap: call it before other work)."""
    if method not in TISSUE_METHODS:
        raise InputError(f"unknown tissue segmentation method '{method}'", f"use one of {', '.join(TISSUE_METHODS)}")
    if method == "fsl" and find_fsl_tool("fast") is None:
        raise InputError(
            "FSL FAST was requested (--segmentation fsl) but $FSLDIR/bin/fast was not found",
            "set FSLDIR to your FSL installation, or use --segmentation embedded",
        )


def _check_inputs(volumes: list[Volume], brain_mask: Volume, n_classes: int, method: str) -> np.ndarray:
    check_method(method)
    if not volumes:
        raise InputError("no input volumes were given for tissue segmentation", "pass at least one volume")
    if n_classes != 3:
        raise InputError(
            f"{n_classes} tissue classes were asked for {volumes[0].name}; only 3 (CSF, GM, WM) are supported",
            "use n_classes=3",
        )
    check_same_grid([*volumes, brain_mask], hint="resample the volumes and the brain mask onto one grid first")
    brain = brain_mask.data > 0.5
    count = int(brain.sum())
    if count == 0:
        raise InputError(f"the brain mask {brain_mask.name} is empty", "check the brain mask (or pass --brain-mask)")
    if count < 1000:
        raise InputError(
            f"the brain mask {brain_mask.name} holds only {count} voxels, too few for tissue segmentation",
            "check the brain mask and the inputs' resolution",
        )
    return brain


def segment_tissues(
    volumes: list[Volume],
    brain_mask: Volume,
    method: str = "auto",
    n_classes: int = 3,
    abnormal: bool = True,
    *,
    hmrf: HmrfSettings | None = None,
    abnormal_settings: AbnormalSettings | None = None,
) -> TissueResult:
    """CSF/GM/WM partial-volume maps, hard labels and an abnormal class inside ``brain_mask``.

    Args:
        volumes: one or more co-registered volumes on one grid (their ``contrast`` names the classes).
        brain_mask: the brain (non-zero inside), on the same grid.
        method: ``"auto"`` (FAST when FSL provides it, else embedded), ``"fsl"`` or ``"embedded"``.
        n_classes: number of tissue classes (3).
        abnormal: also find the abnormal (lesion) class.
        hmrf: settings of the embedded HMRF-EM.
        abnormal_settings: thresholds of the abnormal class.

    Raises:
        InputError: bad method, empty or tiny mask, volumes on different grids, ``fsl`` without FSL.
        RuntimeFailure: FAST failed.
    """
    brain = _check_inputs(volumes, brain_mask, n_classes, method)
    hmrf = hmrf or HmrfSettings()
    abnormal_settings = abnormal_settings or AbnormalSettings()
    started = time.perf_counter()
    use_fsl = method == "fsl" or (method == "auto" and find_fsl_tool("fast") is not None)
    if use_fsl:
        pve, labels, abnormal_mask, details = _segment_fast(volumes, brain, abnormal, abnormal_settings)
        name = "fsl-fast"
    else:
        pve, labels, abnormal_mask, details = _segment_embedded(volumes, brain, abnormal, hmrf, abnormal_settings)
        name = "embedded-hmrf"
    details["parameters"] = {
        "method": method,
        "n_classes": n_classes,
        "abnormal": abnormal,
        "hmrf": None if use_fsl else {**asdict(hmrf), "neighbour_weight": NEIGHBOUR_WEIGHT},
        "fast": {"n": n_classes, **FAST_OPTIONS} if use_fsl else None,
        "abnormal_settings": asdict(abnormal_settings) if abnormal else None,
    }
    details["brain_voxels"] = int(brain.sum())
    details["seconds"] = round(time.perf_counter() - started, 2)
    details["backend"] = name
    log.info("tissue segmentation (%s) of %s: %.1f s", name, ", ".join(v.name for v in volumes), details["seconds"])
    reference = volumes[0]
    return TissueResult(
        pve={n: reference.with_data(pve[j]) for j, n in enumerate(CLASS_NAMES)},
        labels=reference.with_data(labels),
        abnormal=None if abnormal_mask is None else reference.with_data(abnormal_mask),
        method=name,
        details=details,
    )
