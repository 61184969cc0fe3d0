"""One training loop for every family: AdamW, EMA, optional AMP on GPU, gradient accumulation,
atomic checkpoints with RNG state, ``--resume``, step and time limits, periodic validation and a
JSONL log.

A family supplies three callables: ``sample_batch(rng)`` draws a batch from its data with the
passed numpy ``Generator``; ``compute_loss(network, batch, generator)`` returns a scalar loss
(``generator`` is the torch generator for diffusion noise); ``validate(network)`` returns metrics.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.training.checkpoint import load_train_state, read_checkpoint_config, save_checkpoint
from mrsynth_cli.training.distributed import DistributedContext, setup_distributed

__all__ = ["TrainSettings", "train_loop"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Loop settings (not model hyperparameters): they go into the checkpoint's ``training`` record."""

    max_steps: int = 1000
    max_minutes: float | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.995
    grad_accum: int = 1
    checkpoint_every: int = 200
    validate_every: int = 500
    log_every: int = 25
    seed: int = 0
    device: str = "auto"
    warmup_steps: int = 100
    augment: str = "flip"


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(ema.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def _warmup(settings: TrainSettings) -> int:
    """Warm-up steps, at most a fifth of the run (short runs must still reach the full rate)."""
    return max(1, min(settings.warmup_steps, settings.max_steps // 5))


def _log_every(settings: TrainSettings) -> int:
    return max(1, min(settings.log_every, settings.max_steps // 10))


def _lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10% at ``max_steps``."""
    warmup = _warmup(settings)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, settings.max_steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_loop(
    *,
    family: str,
    config: dict[str, Any],
    network: torch.nn.Module,
    sample_batch: Callable[[np.random.Generator], Any],
    compute_loss: Callable[[torch.nn.Module, Any, torch.Generator], torch.Tensor],
    out_dir: Path,
    settings: TrainSettings,
    validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    progress: bool = False,
    distributed: DistributedContext | None = None,
) -> Path:
    """Train ``network`` and return the final checkpoint folder (``out_dir/checkpoint``).

    Under ``torchrun`` (see :mod:`mrsynth_cli.training.distributed`) every rank runs this loop on its
    own batches; rank 0 writes the checkpoints and the log.

    Raises:
        InputError: ``--resume`` without a checkpoint, or with a checkpoint of another family/config.
    """
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    ctx = distributed or setup_distributed(settings.device)
    device = ctx.device
    network = network.to(device)
    model = network
    if ctx.active:
        device_ids = [device] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
    ema = copy.deepcopy(network).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # Each rank draws its own batches and noise; one process keeps the plain seed.
    rng = np.random.default_rng(settings.seed if not ctx.active else [settings.seed, ctx.rank])
    generator = torch.Generator().manual_seed(settings.seed + 1_000_003 * ctx.rank)
    step = 0
    if resume:
        info = read_checkpoint_config(ckpt)
        if info.family != family or info.config != config:
            raise InputError(
                f"cannot resume: {ckpt} was trained with another family or config",
                "use the same options as the run being resumed, or a new --out",
            )
        state = load_train_state(ckpt)
        saved_world = int(state.get("world_size", 1))
        if saved_world != ctx.world_size:
            raise InputError(
                f"cannot resume: {ckpt} was trained with {saved_world} process(es), this run has {ctx.world_size}",
                f"resume with the same number of processes ({saved_world})",
            )
        network.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        numpy_states = json.loads(state["numpy_rng"])
        torch_states = state["torch_rng"]
        if ctx.active:  # one generator state per rank
            numpy_states, torch_states = numpy_states[ctx.rank], torch_states[ctx.rank]
        rng.bit_generator.state = numpy_states
        generator.set_state(torch_states)
        step = int(state["step"])
        log.info("resumed from %s at step %d", ckpt, step)
    elif (ckpt / "config.json").exists():
        raise InputError(f"{out_dir} already holds a training run", "pass --resume to continue it, or choose a new --out")

    def checkpoint(final: bool = False) -> None:
        # Every rank's generators are saved (collected on all ranks), so --resume replays each of them.
        numpy_states = ctx.gather(rng.bit_generator.state)
        torch_states = ctx.gather(generator.get_state())
        if not ctx.is_main:
            ctx.barrier()
            return
        state = {
            "model": network.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "numpy_rng": json.dumps(numpy_states if ctx.active else numpy_states[0]),
            "torch_rng": torch_states if ctx.active else torch_states[0],
            "step": step,
            "world_size": ctx.world_size,
        }
        save_checkpoint(
            ckpt, family=family, config=config, weights=ema.state_dict(), train_state=state, step=step,
            training={**asdict(settings), "device": str(device), "world_size": ctx.world_size, "final": final},
        )
        ctx.barrier()

    out_dir.mkdir(parents=True, exist_ok=True)
    # Only rank 0 logs; the others write to nowhere.
    log_path = out_dir / "train_log.jsonl" if ctx.is_main else Path(os.devnull)
    start = time.monotonic()
    running = 0.0
    bar = None
    if progress and ctx.is_main:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("training", total=settings.max_steps, completed=step)
    try:
        with log_path.open("a") as log_file:
            while step < settings.max_steps:
                minutes = (time.monotonic() - start) / 60
                out_of_time = settings.max_minutes is not None and minutes > settings.max_minutes
                if ctx.any(out_of_time):
                    log.info("stopping at step %d: --max-minutes %.1f reached", step, settings.max_minutes)
                    break
                network.train()
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for _ in range(settings.grad_accum):
                    batch = sample_batch(rng)
                    with torch.autocast(device_type=device.type, enabled=use_amp):
                        loss = compute_loss(model, batch, generator) / settings.grad_accum
                    scaler.scale(loss).backward()
                    total += float(loss.detach())
                total = ctx.mean(total)
                if not math.isfinite(total):
                    raise InputError(f"training diverged at step {step} (loss {total})", "lower --lr or check the data")
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                # The EMA copies the network during warm-up, then averages with ``ema_decay``.
                _ema_update(ema, network, settings.ema_decay if step > _warmup(settings) else 0.0)
                step += 1
                running += total
                record: dict[str, Any] = {}
                if step % _log_every(settings) == 0:
                    record = {"step": step, "loss": running / _log_every(settings), "lr": scheduler.get_last_lr()[0],
                              "minutes": (time.monotonic() - start) / 60}
                    running = 0.0
                    log.info("step %d loss %.4f", step, record["loss"])
                if validate is not None and ctx.is_main and step % settings.validate_every == 0:
                    record = {**record, "step": step, "validation": validate(ema)}
                    log.info("step %d validation %s", step, record["validation"])
                if record:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if step % settings.checkpoint_every == 0:
                    checkpoint()
                if bar is not None:
                    bar.update(task, completed=step)
            if validate is not None and ctx.is_main and step % settings.validate_every != 0:
                log_file.write(json.dumps({"step": step, "validation": validate(ema)}) + "\n")
            checkpoint(final=True)
    finally:
        if bar is not None:
            bar.stop()
    return ckpt
