"""Tissue segmentations brought onto the model grid, as the arrays a model conditions on.

:func:`~mrsynth_cli.preprocessing.tissues.segment_tissues` works on the native reference grid; a
model sees the canonical, resampled and cropped model grid. This applies the preprocessing record to
every map: the hard masks (CSF, GM, WM and the abnormal class, label == k) are resampled linearly, so
a model voxel holds the fraction of it the class covers, and the partial-volume maps ``pve_*`` (the
tissue densities) likewise. Everything is zero outside the model brain mask and float32 in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAP_NAMES", "model_space_tissue_maps"]

#: Names of the maps returned, in order.
MAP_NAMES = ("CSF", "GM", "WM", "abnormal", "pve_CSF", "pve_GM", "pve_WM")
_LABELS = {"CSF": 1, "GM": 2, "WM": 3, "abnormal": 4}  # tissues.LABEL_VALUES


def model_space_tissue_maps(tissues: Any, record: Any, model_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Masks and partial-volume maps of a ``TissueResult`` on the model grid of ``record``.

    Args:
        tissues: a :class:`~mrsynth_cli.preprocessing.tissues.TissueResult` on the reference grid.
        record: the :class:`~mrsynth_cli.preprocessing.record.PreprocessRecord` of the same subject.
        model_mask: the model-grid brain mask.
    """
    labels = np.asarray(tissues.labels.data)
    inside = np.asarray(model_mask, bool)
    out: dict[str, np.ndarray] = {}
    for name, value in _LABELS.items():
        moved = record.to_model_space((labels == value).astype(np.float32), order=1)
        out[name] = np.where(inside, np.clip(moved, 0.0, 1.0), 0.0).astype(np.float32)
    for name in ("CSF", "GM", "WM"):
        moved = record.to_model_space(np.asarray(tissues.pve[name].data, np.float32), order=1)
        out[f"pve_{name}"] = np.where(inside, np.clip(moved, 0.0, 1.0), 0.0).astype(np.float32)
    return out
