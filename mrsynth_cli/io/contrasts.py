"""The contrast vocabulary and how file names and ``--in`` keys map onto it.

Names follow BIDS suffixes (``T1w``, ``T2w``, ``PDw``, ``FLAIR``, ``angio``; T1ce is ``T1w`` with
the ``ce-gadolinium`` entity), BraTS 2023 names (``t1n``, ``t1c``, ``t2w``, ``t2f``) and the plain
names found in public datasets (``T1``, ``T1POST``, ``FLAIR``, ``MRA``...).
"""

from __future__ import annotations

import difflib
import enum
import re
from pathlib import Path

from mrsynth_cli.errors import ContrastError

__all__ = ["Contrast", "parse_contrast", "contrast_from_filename", "parse_input_spec", "nifti_stem"]


class Contrast(str, enum.Enum):
    """An MRI contrast mrsynth can read or synthesize."""

    T1 = "T1"
    T1CE = "T1ce"
    T2 = "T2"
    PD = "PD"
    FLAIR = "FLAIR"
    TOF = "TOF"

    @property
    def bids_suffix(self) -> str:
        """BIDS suffix of this contrast (T1ce is a ``T1w`` with ``ce-gadolinium``)."""
        return _BIDS_SUFFIX[self]

    @property
    def bids_entities(self) -> dict[str, str]:
        """Extra BIDS entities that distinguish this contrast (only ``ce`` for T1ce)."""
        return {"ce": "gadolinium"} if self is Contrast.T1CE else {}

    @property
    def description(self) -> str:
        return _DESCRIPTION[self]

    def __str__(self) -> str:  # "T1ce", not "Contrast.T1CE", in messages and file names
        return self.value


_BIDS_SUFFIX = {
    Contrast.T1: "T1w",
    Contrast.T1CE: "T1w",
    Contrast.T2: "T2w",
    Contrast.PD: "PDw",
    Contrast.FLAIR: "FLAIR",
    Contrast.TOF: "angio",
}

_DESCRIPTION = {
    Contrast.T1: "T1-weighted",
    Contrast.T1CE: "T1-weighted after gadolinium",
    Contrast.T2: "T2-weighted",
    Contrast.PD: "proton-density weighted",
    Contrast.FLAIR: "T2-FLAIR (fluid-attenuated inversion recovery)",
    Contrast.TOF: "time-of-flight MR angiography",
}

#: Lower-case tokens that name each contrast, whether typed by a user or found in a file name.
ALIASES: dict[str, Contrast] = {
    **dict.fromkeys(["t1", "t1w", "t1n", "t1native", "t1pre", "mprage", "spgr", "t1weighted"], Contrast.T1),
    **dict.fromkeys(
        ["t1ce", "t1c", "t1gd", "t1post", "t1gad", "t1contrast", "t1postcontrast", "t1wce", "ce-t1w"],
        Contrast.T1CE,
    ),
    **dict.fromkeys(["t2", "t2w", "t2weighted"], Contrast.T2),
    **dict.fromkeys(["pd", "pdw", "pdweighted"], Contrast.PD),
    **dict.fromkeys(["flair", "fla", "t2f", "t2flair", "t2wflair"], Contrast.FLAIR),
    **dict.fromkeys(["tof", "angio", "mra", "tofmra"], Contrast.TOF),
}

# Multi-token names joined before tokenising, so "T2_FLAIR" is FLAIR and not both T2 and FLAIR.
_JOINS = [
    (re.compile(r"t2[\s_\-.]*(w[\s_\-.]*)?flair", re.I), "flair"),
    (re.compile(r"t1[\s_\-.]*(w[\s_\-.]*)?(ce|c|gd|gad|post|postcontrast|contrast)(?![a-z0-9])", re.I), "t1ce"),
    (re.compile(r"tof[\s_\-.]*mra", re.I), "tof"),
]
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Name tokens that mark a derived file (mask, segmentation) rather than an image of a contrast.
NON_IMAGE_TOKENS = frozenset(
    {"mask", "masks", "brainmask", "seg", "dseg", "probseg", "segmentation", "label", "labels", "roi", "lesionmask"}
)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _choices() -> str:
    return ", ".join(c.value for c in Contrast)


def parse_contrast(name: str) -> Contrast:
    """Map a user-typed contrast name (any alias, any case) to a :class:`Contrast`.

    Raises:
        ContrastError: unknown name, with a did-you-mean suggestion and the valid names.
    """
    key = name.strip().lower()
    for pattern, joined in _JOINS:
        if pattern.fullmatch(key):
            key = joined
    if key in ALIASES:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(ALIASES), n=1, cutoff=0.6)
    guess = f"did you mean '{ALIASES[close[0]]}'? " if close else ""
    raise ContrastError(f"unknown contrast '{name}'", f"{guess}use one of {_choices()}")


def contrast_from_filename(path: str | Path) -> Contrast | None:
    """Infer the contrast from a file name, or ``None`` if the name does not say.

    Masks and segmentations (``*_mask``, ``*_seg``...) say no contrast. BIDS names are read by entity (``_ce-gadolinium_T1w`` is T1ce); other names by tokens.

    Raises:
        ContrastError: the name matches more than one contrast (e.g. ``t1_t2.nii.gz``).
    """
    stem = nifti_stem(path)
    parts = stem.split("_")
    if len(parts) > 1 and all("-" in p for p in parts[:-1]) and parts[0].startswith("sub-"):
        entities = dict(p.split("-", 1) for p in parts[:-1])
        suffix = parts[-1].lower()
        for contrast in Contrast:
            if contrast.bids_suffix.lower() == suffix:
                if suffix == "t1w" and "ce" in entities:
                    return Contrast.T1CE
                return contrast
        return None
    text = stem
    for pattern, joined in _JOINS:
        text = pattern.sub(f"_{joined}_", text)
    tokens = {t.lower() for t in re.split(r"[\s_\-.]+", text) if t}
    if tokens & NON_IMAGE_TOKENS:
        return None
    found = {ALIASES[t] for t in tokens if t in ALIASES}
    if len(found) > 1:
        names = " and ".join(sorted(c.value for c in found))
        raise ContrastError(
            f"the name of {path} matches more than one contrast ({names})",
            f"say which it is with --in <contrast>={path}",
        )
    return found.pop() if found else None


def parse_input_spec(spec: str) -> tuple[Contrast, Path]:
    """Parse one ``--in`` value: ``contrast=path`` or a bare path whose name says the contrast.

    Raises:
        ContrastError: the contrast is unknown, or cannot be inferred from a bare path.
    """
    if "=" in spec:
        key, _, value = spec.partition("=")
        # A path may itself contain "=": only treat the prefix as a key if it looks like one.
        if key and "/" not in key and "\\" not in key and value:
            return parse_contrast(key), Path(value)
        if key and "/" not in key and "\\" not in key and not value:
            raise ContrastError(f"--in {spec} gives no file after '='", f"give a path, e.g. --in {key}=T1.nii.gz")
    path = Path(spec)
    contrast = contrast_from_filename(path)
    if contrast is None:
        raise ContrastError(
            f"cannot tell the contrast of {path} from its name",
            f"name it, e.g. --in t1={path} (contrasts: {_choices()})",
        )
    return contrast, path
