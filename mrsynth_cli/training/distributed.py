"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl on GPU), and a no-op without it.

``torchrun --nproc_per_node N $(which mrsynth) train unet ...`` starts N copies of the command;
torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` variables tell each which it is. Every rank draws
its own batches (its numpy and torch generators are seeded with ``(seed, rank)``), gradients are
averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 preprocesses
first, writes checkpoints and logs, and shows progress. Decisions that must agree (stop on
``--max-minutes``, a diverged loss) are taken from all-reduced values so no rank waits forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mrsynth_cli.devices import resolve_device
from mrsynth_cli.errors import InputError

__all__ = ["DistributedContext", "setup_distributed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is; ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. filling a cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean(self, value: float) -> float:
        """The average of ``value`` over the ranks (the value itself without DDP)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (so all ranks stop together)."""
        if not self.active:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self._collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item() > 0)

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj``, in rank order (one-element list without DDP)."""
        if not self.active:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group (every rank, at the end of training)."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def setup_distributed(device_name: str) -> DistributedContext:
    """Join the process group torchrun announced (once), or return the single-process context.

    Raises:
        InputError: the environment announces several processes but the group cannot be formed.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=resolve_device(device_name))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise InputError("multi-process training on MPS is not supported", "run one process, or use --device cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            raise InputError(
                f"could not join the torchrun process group ({str(exc).splitlines()[0][:120]})",
                "start training with torchrun, or unset WORLD_SIZE for one process",
            ) from exc
    log.info("distributed training: rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return DistributedContext(rank=rank, world_size=world_size, device=device, backend=backend)
