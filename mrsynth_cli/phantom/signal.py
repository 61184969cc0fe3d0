"""MR signal equations and the acquisition protocols of the simulated contrasts.

All times are in seconds, angles in degrees in the protocol (radians inside the equations). Each
equation is the textbook steady-state magnitude signal for one isochromat population with proton
density ``pd`` and relaxation times ``t1``/``t2``; the image of a voxel is the sum of these signals
over the tissues it contains, weighted by their volume fractions (partial volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.phantom.tissues import Tissue, tissue_params

__all__ = [
    "Protocol",
    "protocols",
    "spin_echo",
    "inversion_recovery",
    "spoiled_gradient_echo",
    "inflow_gradient_echo",
    "gd_relaxation",
    "flair_null_inversion_time",
]


@dataclass(frozen=True)
class Protocol:
    """Acquisition parameters of one simulated series (seconds, degrees)."""

    contrast: Contrast
    sequence: str  # "SE" spin echo, "IR" inversion recovery (spin-echo readout), "GR" gradient echo
    repetition_time: float
    echo_time: float
    inversion_time: float | None = None
    flip_angle: float = 90.0
    gadolinium: bool = False
    description: str = ""

    def sidecar(self) -> dict[str, object]:
        """BIDS sidecar fields (times in seconds)."""
        fields: dict[str, object] = {
            "RepetitionTime": self.repetition_time,
            "EchoTime": self.echo_time,
        }
        if self.inversion_time is not None:
            fields["InversionTime"] = round(self.inversion_time, 4)
        fields["FlipAngle"] = self.flip_angle
        fields["ScanningSequence"] = self.sequence
        fields["MRAcquisitionType"] = "3D"
        if self.gadolinium:
            fields["ContrastBolusIngredient"] = "GADOLINIUM"
        return fields


def spin_echo(pd: np.ndarray | float, t1: np.ndarray | float, t2: np.ndarray | float, tr: float, te: float):
    r"""Spin-echo magnitude signal (TE << TR).

    .. math:: S = PD \, (1 - e^{-TR/T_1}) \, e^{-TE/T_2}
    """
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd, t1, t2, tr: float, ti: float, te: float):
    r"""Inversion-recovery magnitude signal with a spin-echo readout (FLAIR when TI nulls CSF).

    .. math:: S = PD \, \left| 1 - 2 e^{-TI/T_1} + e^{-TR/T_1} \right| \, e^{-TE/T_2}
    """
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def flair_null_inversion_time(t1: float, tr: float) -> float:
    r"""The TI that nulls a tissue of longitudinal relaxation time ``t1`` (CSF for FLAIR).

    Setting :math:`1 - 2e^{-TI/T_1} + e^{-TR/T_1} = 0` gives
    :math:`TI = T_1 \ln\!\big(2 / (1 + e^{-TR/T_1})\big)`, which tends to :math:`T_1 \ln 2` for
    :math:`TR \gg T_1`.
    """
    return t1 * math.log(2.0 / (1.0 + math.exp(-tr / t1)))


def spoiled_gradient_echo(pd, t1, t2s, tr: float, te: float, flip_deg: float):
    r"""Spoiled gradient-echo steady state of stationary spins (the saturated background of TOF).

    .. math:: S = PD \, \frac{\sin\alpha \, (1 - E_1)}{1 - \cos\alpha \, E_1} \, e^{-TE/T_2^*},
              \qquad E_1 = e^{-TR/T_1}

    ``t2s`` stands in for :math:`T_2^*` (the tabulated T2; at the short TE of TOF the difference
    is small).
    """
    alpha = math.radians(flip_deg)
    e1 = np.exp(-tr / t1)
    return pd * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1) * np.exp(-te / t2s)


def inflow_gradient_echo(pd, t1, t2s, tr: float, te: float, flip_deg: float, n_pulses):
    r"""Signal of blood that entered the imaging slab fresh (fully relaxed) and met ``n_pulses`` pulses.

    The longitudinal magnetisation after n pulses relaxes from 1 towards the steady state
    :math:`M_{ss} = (1 - E_1)/(1 - \cos\alpha E_1)` geometrically:

    .. math:: M_n = M_{ss} + (1 - M_{ss}) (\cos\alpha \, E_1)^n, \qquad
              S = PD \, \sin\alpha \, M_n \, e^{-TE/T_2^*}

    With ``n_pulses = 0`` this is the unsaturated inflow signal :math:`PD \sin\alpha`.
    """
    alpha = math.radians(flip_deg)
    e1 = math.exp(-tr / t1)
    m_ss = (1.0 - e1) / (1.0 - math.cos(alpha) * e1)
    m_n = m_ss + (1.0 - m_ss) * np.power(math.cos(alpha) * e1, n_pulses)
    return pd * math.sin(alpha) * m_n * np.exp(-te / t2s)


def gd_relaxation(t1: float, t2: float, concentration_mm: float, r1: float, r2: float) -> tuple[float, float]:
    r"""Relaxation times shortened by a gadolinium concentration (fast-exchange, linear relaxivity).

    .. math:: \frac{1}{T_1} = \frac{1}{T_{1,0}} + r_1 C, \qquad \frac{1}{T_2} = \frac{1}{T_{2,0}} + r_2 C
    """
    return 1.0 / (1.0 / t1 + r1 * concentration_mm), 1.0 / (1.0 / t2 + r2 * concentration_mm)


def protocols(field_strength: float) -> dict[Contrast, Protocol]:
    """Typical clinical protocols at 1.5 T or 3 T for the six simulated contrasts.

    Spin-echo T1w/PDw/T2w, T1w after gadolinium (same protocol), FLAIR whose TI nulls CSF at this
    field (:func:`flair_null_inversion_time`), and 3D TOF-MRA (short-TR spoiled gradient echo).
    """
    three = float(field_strength) >= 2.0
    csf_t1 = tissue_params(Tissue.CSF, field_strength).t1
    if three:
        t1w = (0.60, 0.010)
        t2w = (5.0, 0.100)
        pdw = (3.5, 0.012)
        flair_tr, flair_te = 9.0, 0.090
        tof = (0.022, 0.0035, 20.0)
    else:
        t1w = (0.50, 0.010)
        t2w = (4.0, 0.100)
        pdw = (3.0, 0.015)
        flair_tr, flair_te = 9.0, 0.100
        tof = (0.030, 0.0069, 25.0)
    ti = flair_null_inversion_time(csf_t1, flair_tr)
    return {
        Contrast.T1: Protocol(Contrast.T1, "SE", t1w[0], t1w[1], description="spin-echo T1-weighted"),
        Contrast.T1CE: Protocol(
            Contrast.T1CE,
            "SE",
            t1w[0],
            t1w[1],
            gadolinium=True,
            description="spin-echo T1-weighted after gadolinium",
        ),
        Contrast.T2: Protocol(Contrast.T2, "SE", t2w[0], t2w[1], description="spin-echo T2-weighted"),
        Contrast.PD: Protocol(Contrast.PD, "SE", pdw[0], pdw[1], description="spin-echo proton-density weighted"),
        Contrast.FLAIR: Protocol(
            Contrast.FLAIR,
            "IR",
            flair_tr,
            flair_te,
            inversion_time=ti,
            description="inversion-recovery T2-FLAIR, TI nulls CSF",
        ),
        Contrast.TOF: Protocol(
            Contrast.TOF,
            "GR",
            tof[0],
            tof[1],
            flip_angle=tof[2],
            description="3D time-of-flight MR angiography (spoiled gradient echo, inflow enhancement)",
        ),
    }
