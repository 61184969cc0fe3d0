"""Tissue classes and their relaxation parameters (T1, T2 in seconds; PD relative to water = 1).

Values are literature values at 1.5 T and 3 T, rounded; where studies disagree a value inside the
reported range is used and the range is given. Sources:

- [Stanisz05] Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2 relaxation and magnetization transfer in
  tissue at 3T. Magn Reson Med 2005;54:507-512 (tables at 1.5 T and 3 T: WM, GM, muscle, blood...).
- [Wansapura99] Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human brain
  at 3.0 tesla. J Magn Reson Imaging 1999;9:531-538 (3 T: WM T1 0.83 s, GM T1 1.33 s; T2 WM 80 ms,
  GM 110 ms).
- [Gelman99] Gelman N, Gorell JM, Barker PB, et al. MR imaging of human brain at 3.0 T: preliminary
  report on transverse relaxation rates and relation to estimated iron content. Radiology
  1999;210:759-767 (T2 at 1.5 T vs 3 T: T2 changes little, slightly shorter at 3 T).
- [Bojorquez17] Bojorquez JZ, Bricq S, Acquitter C, et al. What are normal relaxation times of
  tissues at 3 T? Magn Reson Imaging 2017;35:69-80 (review; ranges for brain, fat, muscle, CSF).
- [Lu05] Lu H, Nagae-Poetscher LM, Golay X, et al. Routine clinical brain MRI sequences for use at
  3.0 Tesla. J Magn Reson Imaging 2005;22:13-22 (CSF T1 about 4 s at 1.5 T and 3 T).
- [deBazelaire04] de Bazelaire CMJ, Duhamel GD, Rofsky NM, Alsop DC. MR imaging relaxation times of
  abdominal and pelvic tissues measured in vivo at 3.0 T: preliminary results. Radiology
  2004;230:652-659 (subcutaneous fat T1 343/382 ms, T2 58/68 ms at 1.5/3 T).
- [Reichert05] Reichert ILH, Robson MD, Gatehouse PD, et al. Magnetic resonance imaging of cortical
  bone with ultrashort TE pulse sequences. Magn Reson Imaging 2005;23:611-618 (cortical bone
  T2* about 0.4-0.5 ms: no signal at clinical echo times).
- [Techawiboonwong08] Techawiboonwong A, Song HK, Leonard MB, Wehrli FW. Cortical bone water: in
  vivo quantification with ultrashort echo-time MR imaging. Radiology 2008;248:824-833 (bone water
  about 15-25 % by volume).
- [Neeb06] Neeb H, Zilles K, Shah NJ. A new method for fast quantitative mapping of absolute water
  content in vivo. NeuroImage 2006;31:1156-1168 (water content WM about 0.69, GM about 0.80).
- [Rohrer05] Rohrer M, Bauer H, Mintorovitch J, Requardt M, Weinmann HJ. Comparison of magnetic
  properties of MRI contrast media solutions at different magnetic field strengths. Invest Radiol
  2005;40:715-724 (Gd-DTPA in plasma at 37 C: r1 4.1 / 3.7 s^-1 mM^-1, r2 4.6 / 5.2 s^-1 mM^-1 at
  1.5 / 3 T).

Pathological tissue (tumour, oedema, MS lesions), dura and choroid plexus have no single reference
value; they are set from their known behaviour relative to normal tissue (noted per entry) and
marked "approximate".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Tissue",
    "TissueParams",
    "FIELD_STRENGTHS",
    "tissue_params",
    "gd_relaxivity",
    "DSEG_NAMES",
    "GD_CONCENTRATION_RANGE_MM",
]

#: Field strengths (tesla) for which parameters are tabulated.
FIELD_STRENGTHS = (1.5, 3.0)


class Tissue(enum.IntEnum):
    """Tissue classes; the value is the label in the ``dseg`` ground truth (0 = background/air)."""

    CSF = 1
    GM = 2
    WM = 3
    FAT = 4  # subcutaneous fat and the fatty marrow of the diploe
    MUSCLE = 5  # scalp: skin, galea, temporalis muscle
    BONE = 6  # cortical bone of the skull tables
    DURA = 7
    BLOOD = 8  # arterial blood (the vessel tree)
    CHOROID_PLEXUS = 9
    NECROSIS = 10  # tumour necrotic core
    ENHANCING_TUMOUR = 11  # tumour rim, enhances with gadolinium
    OEDEMA = 12  # peritumoural vasogenic oedema
    MS_LESION = 13
    MS_LESION_ENHANCING = 14  # an active (gadolinium-enhancing) MS lesion


#: Names for the dseg.tsv look-up table (index -> name), background included.
DSEG_NAMES: dict[int, str] = {0: "background"} | {
    int(t): name
    for t, name in {
        Tissue.CSF: "CSF",
        Tissue.GM: "GM",
        Tissue.WM: "WM",
        Tissue.FAT: "fat",
        Tissue.MUSCLE: "muscle",
        Tissue.BONE: "bone",
        Tissue.DURA: "dura",
        Tissue.BLOOD: "blood",
        Tissue.CHOROID_PLEXUS: "choroid_plexus",
        Tissue.NECROSIS: "necrosis",
        Tissue.ENHANCING_TUMOUR: "enhancing_tumour",
        Tissue.OEDEMA: "oedema",
        Tissue.MS_LESION: "ms_lesion",
        Tissue.MS_LESION_ENHANCING: "ms_lesion_enhancing",
    }.items()
}


@dataclass(frozen=True)
class TissueParams:
    """Relaxation times in seconds and proton density relative to pure water."""

    t1: float
    t2: float
    pd: float


# (T1 [s], T2 [s], PD) at 1.5 T and at 3 T.
_TABLE: dict[Tissue, dict[float, TissueParams]] = {
    # CSF: T1 ~4 s at 1.5 T, slightly longer at 3 T [Lu05; Bojorquez17 range 3.7-4.5 s]; T2 ~2 s
    # (free-water-like; long T2 in all reports); PD = 1 by definition (water).
    Tissue.CSF: {1.5: TissueParams(4.0, 2.0, 1.0), 3.0: TissueParams(4.3, 2.0, 1.0)},
    # GM: T1 1.5 T 1.20 s (in vivo reports 1.1-1.3 s; [Stanisz05] 1.124 s); 3 T 1.60 s (between
    # [Wansapura99] 1.33 s and [Stanisz05] 1.82 s); T2 95 / 99 ms [Stanisz05] ([Wansapura99] 110 ms
    # at 3 T; [Gelman99] little field dependence); PD 0.80 [Neeb06].
    Tissue.GM: {1.5: TissueParams(1.20, 0.095, 0.80), 3.0: TissueParams(1.60, 0.099, 0.80)},
    # WM: T1 1.5 T 0.79 s (in vivo reports 0.65-0.9 s; [Stanisz05] 0.884 s); 3 T 1.05 s (between
    # [Wansapura99] 0.83 s and [Stanisz05] 1.08 s); T2 72 / 69 ms [Stanisz05] ([Wansapura99] 80 ms);
    # PD 0.69 [Neeb06].
    Tissue.WM: {1.5: TissueParams(0.79, 0.072, 0.69), 3.0: TissueParams(1.05, 0.069, 0.69)},
    # Subcutaneous fat: T1 343 / 382 ms, T2 58 / 68 ms [deBazelaire04]; PD ~0.9 (approximate: fat has a
    # proton density close to water's, and appears at that level on PD-weighted images).
    Tissue.FAT: {1.5: TissueParams(0.343, 0.058, 0.90), 3.0: TissueParams(0.382, 0.068, 0.90)},
    # Skeletal muscle: T1 1.008 / 1.412 s, T2 44 / 50 ms [Stanisz05]; PD 0.75 (water content of muscle
    # ~75 %, approximate).
    Tissue.MUSCLE: {1.5: TissueParams(1.008, 0.044, 0.75), 3.0: TissueParams(1.412, 0.050, 0.75)},
    # Cortical bone: T2(*) ~0.4-0.5 ms [Reichert05], so it is black at every clinical TE; T1 ~0.2-0.25 s
    # (UTE reports, approximate); PD 0.18 (bone water 15-25 % [Techawiboonwong08]).
    Tissue.BONE: {1.5: TissueParams(0.20, 0.0005, 0.18), 3.0: TissueParams(0.25, 0.0005, 0.18)},
    # Dura mater: dense fibrous tissue, hypointense on T1w and T2w; approximate T1 ~ muscle's, short
    # T2 (~30 ms), low PD. Enhances with gadolinium (see GD_CONCENTRATION_RANGE_MM).
    Tissue.DURA: {1.5: TissueParams(1.0, 0.030, 0.55), 3.0: TissueParams(1.35, 0.028, 0.55)},
    # Blood: T1 1.441 / 1.932 s, T2 290 / 275 ms [Stanisz05]; PD 0.85 (water content of blood ~0.85).
    Tissue.BLOOD: {1.5: TissueParams(1.441, 0.290, 0.85), 3.0: TissueParams(1.932, 0.275, 0.85)},
    # Choroid plexus: vascular, CSF-secreting tissue, roughly GM-like T1 and a longer T2 (approximate);
    # enhances strongly with gadolinium.
    Tissue.CHOROID_PLEXUS: {1.5: TissueParams(1.25, 0.120, 0.85), 3.0: TissueParams(1.65, 0.115, 0.85)},
    # Necrosis: fluid-rich, long T1 and T2 but less free than CSF (approximate: T1 ~2.5-3 s, T2 ~0.4 s),
    # so only partly suppressed on FLAIR.
    Tissue.NECROSIS: {1.5: TissueParams(2.5, 0.40, 0.95), 3.0: TissueParams(3.0, 0.38, 0.95)},
    # Enhancing (viable) tumour before contrast: T1 and T2 above GM (approximate: T1 ~1.1x GM, T2 ~120 ms).
    Tissue.ENHANCING_TUMOUR: {1.5: TissueParams(1.30, 0.120, 0.85), 3.0: TissueParams(1.75, 0.115, 0.85)},
    # Vasogenic oedema: extra-cellular water in WM, T1 ~1.65x WM, T2 ~2.5x WM (approximate): mildly dark
    # on T1w, bright on T2w and FLAIR.
    Tissue.OEDEMA: {1.5: TissueParams(1.30, 0.180, 0.85), 3.0: TissueParams(1.75, 0.170, 0.85)},
    # MS lesion: T1 ~1.4x normal-appearing WM, T2 ~1.8x (approximate; ranges in the MS relaxometry
    # literature are wide): bright on T2w/FLAIR, mildly dark on T1w.
    Tissue.MS_LESION: {1.5: TissueParams(1.10, 0.130, 0.78), 3.0: TissueParams(1.45, 0.125, 0.78)},
    Tissue.MS_LESION_ENHANCING: {1.5: TissueParams(1.10, 0.130, 0.78), 3.0: TissueParams(1.45, 0.125, 0.78)},
}

#: Gadolinium concentration ranges (mM, a few minutes after 0.1 mmol/kg of a Gd chelate; approximate):
#: the simulator draws one value per subject inside each range. Tissues not listed take up no Gd.
GD_CONCENTRATION_RANGE_MM: dict[Tissue, tuple[float, float]] = {
    Tissue.BLOOD: (0.3, 0.5),  # whole blood: plasma ~0.5-0.9 mM times (1 - haematocrit)
    Tissue.ENHANCING_TUMOUR: (0.35, 0.6),  # leaky tumour vessels: large extravascular uptake
    Tissue.CHOROID_PLEXUS: (0.4, 0.6),  # no blood-brain barrier
    Tissue.DURA: (0.15, 0.3),  # no blood-brain barrier, thin mild enhancement
    Tissue.MUSCLE: (0.05, 0.12),  # extracellular space of scalp muscle
    Tissue.MS_LESION_ENHANCING: (0.15, 0.3),  # active lesion: transient barrier breakdown
}

# Gd-DTPA in plasma at 37 C [Rohrer05]: (r1, r2) in s^-1 mM^-1.
_GD_RELAXIVITY = {1.5: (4.1, 4.6), 3.0: (3.7, 5.2)}


def _check_field(field_strength: float) -> float:
    for field in FIELD_STRENGTHS:
        if abs(float(field_strength) - field) < 1e-6:
            return field
    raise ValueError(f"no tissue parameters at {field_strength} T (tabulated: 1.5 and 3 T)")


def tissue_params(tissue: Tissue, field_strength: float) -> TissueParams:
    """T1/T2 (s) and PD of ``tissue`` at ``field_strength`` tesla (1.5 or 3)."""
    return _TABLE[Tissue(tissue)][_check_field(field_strength)]


def gd_relaxivity(field_strength: float) -> tuple[float, float]:
    """(r1, r2) of a gadolinium chelate in s^-1 mM^-1 at ``field_strength`` [Rohrer05]."""
    return _GD_RELAXIVITY[_check_field(field_strength)]
