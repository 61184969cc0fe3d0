"""``mrsynth train <family>``: train a model on your own subject folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.boundary import boundary
from mrsynth_cli.cli.options import DeviceOpt, SeedOpt

app = typer.Typer(
    help="Train a model family on subject folders (BIDS, BraTS or plain folders).", no_args_is_help=True,
    rich_markup_mode="markdown",
)

DataOpt = Annotated[
    list[Path], typer.Option("--data", help="Folder(s) of subjects (several may follow one --data).", show_default=False)
]
OutOpt = Annotated[Path, typer.Option("--out", help="Run folder: checkpoint/, train_log.jsonl.")]
MaxStepsOpt = Annotated[int, typer.Option("--max-steps", min=1, help="Stop after this many optimiser steps.")]
MaxMinutesOpt = Annotated[float | None, typer.Option("--max-minutes", help="Stop after this many minutes (checkpoint kept).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out (same options).")]
AugmentOpt = Annotated[
    str,
    typer.Option(
        "--augment",
        help="Augmentations: none, all, or a comma list of flip (left-right), affine (rotation/zoom), "
        "gamma and noise (inputs only).",
    ),
]
ValidateOpt = Annotated[
    list[str] | None, typer.Option("--validation-subject", help="Subject ID(s) held out for validation metrics.")
]


@app.command("unet")
@boundary
def train_unet_cmd(
    data: DataOpt,
    target: Annotated[str, typer.Option("--target", help="Contrast to synthesize.")],
    out: OutOpt,
    inputs: Annotated[
        list[str] | None, typer.Option("--inputs", help="Input contrasts (default: T1, T1ce, T2, FLAIR minus the target).")
    ] = None,
    max_steps: MaxStepsOpt = 2000,
    max_minutes: MaxMinutesOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    channels: Annotated[str, typer.Option("--channels", help="UNet channels per level, comma-separated.")] = "32,64,128,256",
    spacing: Annotated[float, typer.Option("--spacing", help="Model grid spacing in mm.")] = 1.5,
    size: Annotated[str, typer.Option("--size", help="Model grid X,Y,Z in voxels (brain-centred crop/pad).")] = "112,128,112",
    validation_subject: ValidateOpt = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = 200,
    validate_every: Annotated[int, typer.Option("--validate-every", min=1, help="Steps between validations.")] = 500,
    augment: AugmentOpt = "flip",
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the deterministic 2D regression UNet baseline (L1), one model per target contrast.

    Every subject with the target and at least one input is used, except --validation-subject ones.
    Import the result with: mrsynth weights import OUT/checkpoint --name NAME
    """
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.families.unet.config import UNetConfig
    from mrsynth_cli.families.unet.train import train_unet
    from mrsynth_cli.io.contrasts import Contrast, parse_contrast
    from mrsynth_cli.paths import cache_dir
    from mrsynth_cli.training.augment import AugmentSettings
    from mrsynth_cli.training.loop import TrainSettings

    target_c = parse_contrast(target)
    if inputs:
        input_cs = [parse_contrast(c) for c in inputs]
    else:
        input_cs = [c for c in (Contrast.T1, Contrast.T1CE, Contrast.T2, Contrast.FLAIR) if c != target_c]
    try:
        channel_tuple = tuple(int(c) for c in channels.split(","))
    except ValueError as exc:
        raise InputError(f"--channels '{channels}' is not a list of integers", "e.g. --channels 32,64,128,256") from exc
    try:
        model_shape = tuple(int(v) for v in size.split(","))
    except ValueError as exc:
        raise InputError(f"--size '{size}' is not three integers", "e.g. --size 112,128,112") from exc
    if len(model_shape) != 3:
        raise InputError(f"--size '{size}' is not three integers", "e.g. --size 112,128,112")
    config = UNetConfig(
        target=target_c.value, inputs=tuple(c.value for c in input_cs), channels=channel_tuple,
        strides=(2,) * (len(channel_tuple) - 1), spacing_mm=spacing, model_shape=model_shape, batch_size=batch_size,
    )
    settings = TrainSettings(
        max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, seed=seed, device=device,
        checkpoint_every=checkpoint_every, validate_every=validate_every,
        augment=AugmentSettings.parse(augment).to_spec(),
    )
    ckpt, summary = train_unet(
        data, config, out, settings, validation_subjects=validation_subject, resume=resume,
        progress=sys.stderr.isatty(), cache_dir=cache_dir(),
    )
    typer.echo(f"trained on {', '.join(summary['train_subjects'])}; checkpoint: {ckpt}")
    typer.echo(f"import it with: mrsynth weights import {ckpt} --name my-unet-{target_c.value.lower()}")
