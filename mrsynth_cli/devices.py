"""Devices: pick the one asked for, and survive GPU out-of-memory by shrinking batches.

A GPU that runs out of memory on a large volume should not end a night's batch run: inference over
slices (or slabs) goes through :func:`map_batches`, which halves the batch on out-of-memory and
carries on; when even one item does not fit, the error reaches the caller (the synthesis pipeline),
which moves the model to the CPU and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from mrsynth_cli.errors import InputError

__all__ = ["resolve_device", "is_out_of_memory", "map_batches"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA, then MPS, then CPU; an explicitly requested missing device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"unknown device '{name}'", "use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{name}' was requested but no CUDA GPU is available", "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device '{name}' does not exist ({torch.cuda.device_count()} GPU(s) found)", "pick an existing GPU index"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("device 'mps' was requested but is not available", "use --device cpu or auto")
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises ``OutOfMemoryError``; MPS (and older CUDA paths) a ``RuntimeError`` that says so."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def map_batches(run: Callable[[Sequence[T]], list[R]], items: Sequence[T], batch_size: int) -> list[R]:
    """``run`` over ``items`` in batches, one result per item, halving the batch on out-of-memory.

    Args:
        run: maps a batch of items to as many results (e.g. slice indices to predicted slices).
        items: everything to process, in order.
        batch_size: the first batch size tried; once halved it stays small for the rest.

    Raises:
        The out-of-memory error itself when a batch of one item does not fit (the caller decides
        whether to fall back to the CPU).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    results: list[R] = []
    start = 0
    while start < len(items):
        batch = items[start : start + batch_size]
        try:
            out = run(batch)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc) or batch_size == 1:
                raise
            _free_cached_memory()
            batch_size = max(1, batch_size // 2)
            log.warning("out of device memory; continuing with batches of %d", batch_size)
            continue
        if len(out) != len(batch):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(batch)} items")
        results.extend(out)
        start += len(batch)
    return results
