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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrsynth_cli.errors import InputError
from mrsynth_cli.training.checkpoint import load_train_state, read_checkpoint_config, save_checkpoint

__all__ = ["TrainSettings", "train_loop", "resolve_device"]

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
) -> Path:
    """Train ``network`` and return the final checkpoint folder (``out_dir/checkpoint``).

    Raises:
        InputError: ``--resume`` without a checkpoint, or with a checkpoint of another family/config.
    """
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    device = resolve_device(settings.device)
    network = network.to(device)
    ema = copy.deepcopy(network).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    step = 0
    if resume:
        info = read_checkpoint_config(ckpt)
        if info.family != family or info.config != config:
            raise InputError(
                f"cannot resume: {ckpt} was trained with another family or config",
                "use the same options as the run being resumed, or a new --out",
            )
        state = load_train_state(ckpt)
        network.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        generator.set_state(state["torch_rng"])
        step = int(state["step"])
        log.info("resumed from %s at step %d", ckpt, step)
    elif (ckpt / "config.json").exists():
        raise InputError(f"{out_dir} already holds a training run", "pass --resume to continue it, or choose a new --out")

    def checkpoint(final: bool = False) -> None:
        state = {
            "model": network.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "torch_rng": generator.get_state(),
            "step": step,
        }
        save_checkpoint(
            ckpt, family=family, config=config, weights=ema.state_dict(), train_state=state, step=step,
            training={**asdict(settings), "device": str(device), "final": final},
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    start = time.monotonic()
    running = 0.0
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("training", total=settings.max_steps, completed=step)
    try:
        with log_path.open("a") as log_file:
            while step < settings.max_steps:
                if settings.max_minutes is not None and (time.monotonic() - start) / 60 > settings.max_minutes:
                    log.info("stopping at step %d: --max-minutes %.1f reached", step, settings.max_minutes)
                    break
                network.train()
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for _ in range(settings.grad_accum):
                    batch = sample_batch(rng)
                    with torch.autocast(device_type=device.type, enabled=use_amp):
                        loss = compute_loss(network, batch, generator) / settings.grad_accum
                    scaler.scale(loss).backward()
                    total += float(loss.detach())
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
                if validate is not None and step % settings.validate_every == 0:
                    record = {**record, "step": step, "validation": validate(ema)}
                    log.info("step %d validation %s", step, record["validation"])
                if record:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if step % settings.checkpoint_every == 0:
                    checkpoint()
                if bar is not None:
                    bar.update(task, completed=step)
            if validate is not None and step % settings.validate_every != 0:
                log_file.write(json.dumps({"step": step, "validation": validate(ema)}) + "\n")
            checkpoint(final=True)
    finally:
        if bar is not None:
            bar.stop()
    return ckpt
