"""MR physics of MRDiff (Sec. 2.3): latent quantitative maps, the signal equations, and each input's TR/TE/TI.

* :func:`mr_signal` is eq. 6, the spin-echo signal ``S0 (1 - e^{-TR/T1}) e^{-TE/T2}``. For an input
  acquired with an inversion pulse (TI given, e.g. FLAIR) it is the inversion-recovery magnitude with
  a spin-echo readout, ``S0 |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}`` (the paper models only
  spin-echo inputs; its released code passes TI but never uses it, which would give FLAIR the
  contrast of a long-TR T2w image).
* :class:`PhysicsModule` is eqs. 5 and 7: ``h_t = Conv(IWT(e_t))`` split into positive T1, T2 and S0
  maps, then for every condition ``k`` the signal with its own ``TR_k, TE_k(, TI_k)``, a convolution
  and the DWT back to sub-band features for the decoder.
* :func:`resolve_acquisition` finds each input's parameters: ``--tr/--te/--ti`` flags first, else the
  BIDS JSON sidecar (seconds), else a one-line error saying how to supply them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mrdiff.subbands import Subbands
from mrsynth_cli.io.contrasts import Contrast, parse_contrast
from mrsynth_cli.io.subjects import _MAX_SECONDS, Acquisition, read_sidecar, sidecar_path

__all__ = [
    "mr_signal",
    "PhysicsModule",
    "parse_acquisition_flags",
    "resolve_acquisition",
    "acquisition_tensor",
    "acquisition_record",
    "protocol_mismatches",
    "HOW_TO_SUPPLY",
]

#: The hint every missing-parameter error ends with.
HOW_TO_SUPPLY = (
    "give each input a BIDS JSON sidecar with RepetitionTime and EchoTime in seconds (InversionTime for FLAIR), "
    "or pass them, e.g. --tr t1=0.45 --te t1=0.0098 --tr flair=9 --te flair=0.09 --ti flair=2.5"
)
_FLAGS = {"RepetitionTime": "--tr", "EchoTime": "--te", "InversionTime": "--ti"}


def mr_signal(s0: Tensor, t1: Tensor, t2: Tensor, tr: Tensor, te: Tensor, ti: Tensor | None = None) -> Tensor:
    """Eq. 6 (spin echo), or the inversion-recovery magnitude where ``ti > 0``; all times in seconds.

    Every argument broadcasts against the others (maps ``(B, C, H, W)``, parameters ``(B, 1, 1, 1)``).
    """
    longitudinal = 1.0 - torch.exp(-tr / t1)
    if ti is not None:
        inversion = (1.0 - 2.0 * torch.exp(-ti / t1) + torch.exp(-tr / t1)).abs()
        longitudinal = torch.where(ti > 0, inversion, longitudinal)
    return s0 * longitudinal * torch.exp(-te / t2)


class PhysicsModule(nn.Module):
    """``I_sigma`` (eq. 5) and ``M_sigma`` (eq. 7) between the encoder and the condition decoder.

    Args:
        channels: channels of ``e_t`` (divisible by 4: its four sub-band groups).
        conditions: number of conditions K.
        map_channels: channels of each quantitative map.
        t1_unit_s, t2_unit_s: T1 = softplus * t1_unit_s (seconds), T2 likewise; S0 = softplus.
    """

    def __init__(self, channels: int, conditions: int, map_channels: int, t1_unit_s: float, t2_unit_s: float):
        super().__init__()
        self.subbands = Subbands()
        self.map_channels = map_channels
        self.t1_unit_s = t1_unit_s
        self.t2_unit_s = t2_unit_s
        quarter = channels // 4
        self.to_maps = nn.Conv2d(quarter, 3 * map_channels, 3, padding=1)
        self.from_signals = nn.Conv2d(conditions * map_channels, quarter, 3, padding=1)

    def maps(self, e_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Eq. 5: positive (T1 [s], T2 [s], S0) maps at twice the resolution of ``e_t``."""
        h = self.to_maps(self.subbands.merge(e_t))
        a, b, c = h.chunk(3, dim=1)
        return F.softplus(a) * self.t1_unit_s + 1e-4, F.softplus(b) * self.t2_unit_s + 1e-5, F.softplus(c)

    @staticmethod
    def signals(t1: Tensor, t2: Tensor, s0: Tensor, acquisition: Tensor) -> Tensor:
        """The signal of every condition from (B, m, H, W) maps: (B, K m, H, W), condition-major.

        ``acquisition`` is (B, K, 3) = (TR, TE, TI) in seconds per condition (TI = 0: spin echo).
        """
        out = []
        for k in range(acquisition.shape[1]):
            tr, te, ti = (acquisition[:, k, j].to(t1)[:, None, None, None] for j in range(3))
            out.append(mr_signal(s0, t1, t2, tr, te, ti))
        return torch.cat(out, dim=1)

    def forward(self, e_t: Tensor, acquisition: Tensor) -> Tensor:
        """Eq. 7: ``DWT(Conv(signal_k(maps)))`` for ``acquisition`` (B, K, 3) = (TR, TE, TI) per condition."""
        return self.subbands.split(self.from_signals(self.signals(*self.maps(e_t), acquisition)))


def _seconds(key: str, value: float, where: str) -> float:
    if not value > 0:
        raise InputError(f"{where}: {key} is {value}, not a positive number of seconds", "e.g. 0.45 (seconds)")
    if value > _MAX_SECONDS[key]:
        raise InputError(f"{where}: {key} = {value} looks like milliseconds", f"use seconds: {value / 1000:g}")
    return float(value)


def parse_acquisition_flags(
    tr: list[str] | None = None, te: list[str] | None = None, ti: list[str] | None = None
) -> dict[Contrast, dict[str, float]]:
    """``--tr t1=0.45 --te t1=0.0098 --ti flair=2.5`` -> ``{T1: {"RepetitionTime": 0.45, ...}, ...}`` (seconds).

    Raises:
        InputError: a value that is not ``contrast=seconds``, a repeated contrast, or milliseconds.
    """
    out: dict[Contrast, dict[str, float]] = {}
    for key, specs in (("RepetitionTime", tr), ("EchoTime", te), ("InversionTime", ti)):
        flag = _FLAGS[key]
        for spec in specs or []:
            name, sep, text = spec.partition("=")
            try:
                if not sep:
                    raise ValueError
                value = float(text)
            except ValueError:
                raise InputError(f"{flag} '{spec}' is not contrast=seconds", f"e.g. {flag} t1=0.45") from None
            contrast = parse_contrast(name.strip())
            values = out.setdefault(contrast, {})
            if key in values:
                raise InputError(f"{flag} gives {contrast} twice", f"give one {flag} per contrast")
            values[key] = _seconds(key, value, f"{flag} {spec}")
    return out


def resolve_acquisition(
    contrasts: list[Contrast],
    files: Mapping[Contrast, Path | None],
    overrides: Mapping[Contrast, Mapping[str, float]] | None = None,
) -> dict[Contrast, Acquisition]:
    """TR, TE (and TI) of each input: flags override the file's sidecar; FLAIR needs TI.

    Args:
        contrasts: the model's inputs, in order.
        files: each input's NIfTI file (its sidecar is read), or None for none.
        overrides: values from :func:`parse_acquisition_flags`.

    Raises:
        InputError: a flag names a contrast that is not an input, or an input lacks TR/TE (or a FLAIR
            input lacks TI), naming the file and how to supply them.
    """
    overrides = dict(overrides or {})
    stray = [str(c) for c in overrides if c not in files]
    if stray:
        raise InputError(
            f"--tr/--te/--ti name {', '.join(stray)}, which is not among the inputs", "name the --in contrasts"
        )
    resolved: dict[Contrast, Acquisition] = {}
    for contrast in contrasts:
        path = files.get(contrast)
        sidecar = read_sidecar(path) if path is not None else Acquisition()
        values = {
            "RepetitionTime": sidecar.repetition_time,
            "EchoTime": sidecar.echo_time,
            "InversionTime": sidecar.inversion_time,
            **overrides.get(contrast, {}),
        }
        needed = ["RepetitionTime", "EchoTime"] + (["InversionTime"] if contrast is Contrast.FLAIR else [])
        missing = [k for k in needed if values.get(k) is None]
        if missing:
            source = f"{path} (sidecar {sidecar_path(Path(path)).name})" if path is not None else "it"
            raise InputError(
                f"mrdiff needs the {'/'.join(_FLAGS[k][2:].upper() for k in missing)} of input {contrast}, "
                f"but neither {source} nor the command line gives it",
                HOW_TO_SUPPLY,
            )
        resolved[contrast] = Acquisition(values["RepetitionTime"], values["EchoTime"], values["InversionTime"])
    return resolved


def acquisition_tensor(contrasts: list[Contrast], acquisition: Mapping[Contrast, Acquisition]) -> Tensor:
    """(K, 3) float32 tensor of (TR, TE, TI) in seconds per input, TI = 0 without inversion."""
    rows = []
    for contrast in contrasts:
        a = acquisition[contrast]
        rows.append([a.repetition_time, a.echo_time, a.inversion_time or 0.0])
    return torch.tensor(rows, dtype=torch.float32)


def acquisition_record(acquisition: Mapping[Contrast, Acquisition]) -> dict[str, dict[str, float | None]]:
    """The provenance record: ``{"T1": {"RepetitionTime": .., "EchoTime": .., "InversionTime": ..}}`` (s)."""
    return {
        str(c): {k: v for k, v in a.to_dict().items() if k != "MagneticFieldStrength"} for c, a in acquisition.items()
    }


def protocol_mismatches(
    contrasts: list[Contrast], given: Tensor, trained: tuple[tuple[float, float, float], ...], factor: float = 1.5
) -> list[str]:
    """One line per input whose TR or TE differs from the training protocol by more than ``factor``, or whose
    inversion (TI given or not) differs; empty when ``trained`` is unknown."""
    lines = []
    for contrast, row, reference in zip(contrasts, given.tolist(), trained, strict=False):
        far = any(max(a / b, b / a) > factor for a, b in zip(row[:2], reference[:2], strict=True))
        if far or (row[2] > 0) != (reference[2] > 0):
            lines.append(
                f"input {contrast}: TR/TE/TI {row[0]:g}/{row[1]:g}/{row[2]:g} s, but the model was trained on "
                f"{reference[0]:g}/{reference[1]:g}/{reference[2]:g} s"
            )
    return lines
