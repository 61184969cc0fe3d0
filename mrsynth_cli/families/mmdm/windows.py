"""2.5D windows: adjacent axial slices as channels, and the sliding window with overlap averaging.

Volumes are model-space arrays ``(X, Y, Z)`` with Z the axial axis; a window is ``(slices, X, Y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["window_starts", "extract_windows", "sliding_window_average", "training_window_start"]


def window_starts(num_slices: int, window: int, stride: int, first: int = 0, last: int | None = None) -> list[int]:
    """Starts of windows of ``window`` slices every ``stride`` that together cover slices ``first..last``.

    The last window is moved back to end at ``last`` (or the volume's end), so every slice in the range
    is covered at least once and no window leaves the volume.
    """
    if window > num_slices:
        raise ValueError(f"a window of {window} slices does not fit {num_slices} slices")
    last = num_slices - 1 if last is None else last
    first = max(0, min(first, num_slices - window))
    end = min(num_slices - window, max(first, last - window + 1))
    starts = list(range(first, end + 1, stride))
    if starts[-1] != end:
        starts.append(end)
    return starts


def extract_windows(volume: np.ndarray, starts: Sequence[int], window: int) -> np.ndarray:
    """``(len(starts), window, X, Y)`` float32 windows of an ``(X, Y, Z)`` volume."""
    return np.stack([np.moveaxis(volume[..., s : s + window], -1, 0) for s in starts]).astype(np.float32)


def training_window_start(center: int, num_slices: int, window: int) -> int:
    """The start of the window centred on ``center`` (shifted to stay inside the volume)."""
    return int(np.clip(center - window // 2, 0, num_slices - window))


def sliding_window_average(
    predict: Callable[[list[int]], np.ndarray],
    shape: tuple[int, int, int],
    starts: Sequence[int],
    window: int,
    batch_size: int = 4,
) -> np.ndarray:
    """Average of overlapping window predictions, written back into an ``(X, Y, Z)`` volume.

    Args:
        predict: ``predict(starts_chunk) -> (len(chunk), window, X, Y)`` window predictions.
        shape: the volume shape.
        starts: window starts (e.g. :func:`window_starts`).
        window: slices per window.
        batch_size: windows per ``predict`` call.

    Returns:
        The voxel-wise mean over all windows covering each slice; slices no window covers are 0.
    """
    total = np.zeros(shape, np.float64)
    count = np.zeros(shape[2], np.int64)
    starts = list(starts)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        out = predict(chunk)
        for start, pred in zip(chunk, out, strict=True):
            total[..., start : start + window] += np.moveaxis(pred, 0, -1)
            count[start : start + window] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)
