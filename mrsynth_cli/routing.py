"""Pick the manifest model(s) for the contrasts a subject has and the target(s) asked for."""

from __future__ import annotations

import difflib

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.weights.manifest import ModelEntry

__all__ = ["choose_models", "capabilities"]

# Family preference by situation (the routing rules); families not installed are skipped,
# and the regression baseline is the fallback for everything it can do.
_PREFER_TOF = ("mmdm", "unet")
_PREFER_PHYSICS = ("mrdiff", "cola-diff", "aldm", "unet")
_PREFER_MANY_TO_ONE = ("cola-diff", "aldm", "mrdiff", "unet")
_PREFER_ONE_TO_MANY = ("aldm", "cola-diff", "mrdiff", "unet")


def capabilities(entries: list[ModelEntry]) -> str:
    """One line per installed model: what it makes from what."""
    if not entries:
        return "no models are installed"
    return "; ".join(e.summary() for e in entries)


def _preference(available: set[Contrast], targets: list[Contrast], physics: bool) -> tuple[str, ...]:
    if Contrast.TOF in targets:
        return _PREFER_TOF
    if physics:
        return _PREFER_PHYSICS
    if len(targets) > 1 or len(available) == 1:
        return _PREFER_ONE_TO_MANY
    return _PREFER_MANY_TO_ONE


def _needs_acquisition(family: str) -> bool:
    from mrsynth_cli.registry import FAMILIES

    spec = FAMILIES.get(family)
    return spec is not None and spec.needs_acquisition


def _rank(entry: ModelEntry, available: set[Contrast], order: tuple[str, ...]) -> tuple:
    family_rank = order.index(entry.family) if entry.family in order else len(order)
    covered = len(available & set(entry.inputs))
    local_first = 0 if entry.source == "local" else 1  # a model the user imported wins over the packaged one
    return (family_rank, -covered, local_first, entry.name)


def choose_models(
    entries: list[ModelEntry],
    available: set[Contrast],
    targets: list[Contrast],
    *,
    model: str | None = None,
    physics: bool = False,
) -> dict[Contrast, ModelEntry]:
    """Map each target to the model that will make it (one model may serve several targets).

    Raises:
        InputError: the named model does not exist or does not fit, or nothing fits; the message
            lists what the installed models can do.
    """
    overlap = available & set(targets)
    if overlap:
        raise InputError(
            f"{', '.join(map(str, sorted(overlap, key=list(Contrast).index)))} is both an input and a target",
            "synthesize only contrasts you do not have",
        )
    if model is not None:
        by_name = {e.name: e for e in entries}
        if model not in by_name:
            close = difflib.get_close_matches(model, list(by_name), n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(f"unknown model '{model}'", f"{guess}installed: {', '.join(by_name) or 'none'}")
        entry = by_name[model]
        missing = [t for t in targets if t not in entry.outputs]
        if missing or not entry.accepts(available):
            raise InputError(
                f"model {entry.summary()} cannot make {'/'.join(map(str, targets))} from "
                f"{'/'.join(map(str, sorted(available, key=list(Contrast).index)))}",
                "choose a model that fits (see: mrsynth weights list)",
            )
        return {t: entry for t in targets}
    order = _preference(available, targets, physics)
    # A model that needs TR/TE is chosen automatically only when they were given (else it would refuse).
    # A model marked automatic = false in its manifest runs only when named with --model.
    fitting = [e for e in entries if e.accepts(available) and e.automatic
               and (physics or not _needs_acquisition(e.family))]
    whole = [e for e in fitting if all(t in e.outputs for t in targets)]
    if whole:
        best = min(whole, key=lambda e: _rank(e, available, order))
        return {t: best for t in targets}
    chosen: dict[Contrast, ModelEntry] = {}
    for target in targets:
        candidates = [e for e in fitting if target in e.outputs]
        if not candidates:
            have = "/".join(str(c) for c in Contrast if c in available)
            raise InputError(
                f"no installed model makes {target} from {have}",
                f"installed models: {capabilities(entries)}",
            )
        chosen[target] = min(candidates, key=lambda e: _rank(e, available, order))
    return chosen
