"""Brain masks. (Interim: skull-stripped inputs only; the full module replaces this file.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrsynth_cli.errors import InputError
from mrsynth_cli.io.volume import Volume
from mrsynth_cli.metrics.normalise import auto_brain_mask


@dataclass
class BrainMaskResult:
    mask: Volume
    method: str
    details: dict[str, Any] = field(default_factory=dict)


def brain_mask(volumes: list[Volume], method: str = "auto") -> BrainMaskResult:
    reference = volumes[0]
    mask, how = auto_brain_mask(reference.data)
    if "zero background" not in how:
        raise InputError(f"{reference.name} is not skull-stripped", "skull-strip it first (e.g. HD-BET or FSL BET)")
    return BrainMaskResult(reference.with_data(mask.astype(np.float32)), "already-stripped", {"how": how})
