"""Device choice and the out-of-memory batch fallback.

No GPU here: out-of-memory is raised by a batch function that only "fits" small batches, the same
exception type CUDA raises, so the halving logic is exercised exactly as it runs on a GPU.
"""

from __future__ import annotations

import logging

import pytest
import torch

from mrsynth_cli.devices import is_out_of_memory, map_batches, resolve_device
from mrsynth_cli.errors import InputError


def _fits(limit: int, calls: list[int]):
    def run(batch):
        calls.append(len(batch))
        if len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [item * 10 for item in batch]

    return run


def test_map_batches_halves_on_oom_and_keeps_order(caplog) -> None:
    calls: list[int] = []
    with caplog.at_level(logging.WARNING):
        out = map_batches(_fits(3, calls), list(range(11)), batch_size=8)
    assert out == [i * 10 for i in range(11)]
    assert calls[:3] == [8, 4, 2]  # 8 fails, 4 fails, then batches of 2 to the end
    assert set(calls[2:]) <= {1, 2}
    assert "batches of 2" in caplog.text


def test_map_batches_reraises_when_one_item_does_not_fit() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        map_batches(_fits(0, []), [1, 2, 3], batch_size=4)


def test_other_errors_are_not_swallowed() -> None:
    def broken(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        map_batches(broken, [1, 2], batch_size=2)


def test_oom_detection_covers_mps_style_runtime_errors() -> None:
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))


def test_missing_devices_are_errors() -> None:
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
