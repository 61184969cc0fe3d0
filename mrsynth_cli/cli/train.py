"""``mrsynth train <family>``: train a model on your own subject folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.boundary import boundary
from mrsynth_cli.cli.options import DeviceOpt, SeedOpt, WeightsDirOpt

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


ConfigOpt = Annotated[
    str, typer.Option("--config", help="cola-diff preset (cpu, paper) or a .toml file of the same layout.")
]
PresetStepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, help="Optimiser steps (default: preset).")]
PresetBatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Slices per step (default: preset).")]
PresetCheckpointOpt = Annotated[
    int | None, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints (default: preset or 200).")
]
PresetValidateOpt = Annotated[
    int | None, typer.Option("--validate-every", min=1, help="Steps between validations (default: preset or 500).")
]


def _loop_settings(preset_table: dict, **given):
    """Loop settings: the preset's table, overridden by every option given on the command line."""
    from mrsynth_cli.training.augment import AugmentSettings
    from mrsynth_cli.training.loop import TrainSettings

    values = {"checkpoint_every": 200, "validate_every": 500, **preset_table,
              **{k: v for k, v in given.items() if v is not None}}
    values["augment"] = AugmentSettings.parse(values.get("augment", "flip")).to_spec()
    return TrainSettings(**values)


@app.command("autoencoder")
@boundary
def train_autoencoder_cmd(
    data: DataOpt,
    out: OutOpt,
    config: ConfigOpt = "cpu",
    contrasts: Annotated[
        list[str] | None, typer.Option("--contrasts", help="Contrasts to train on (default: the preset's).")
    ] = None,
    max_steps: PresetStepsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    batch_size: PresetBatchOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default: preset).")] = None,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Autoencoder channels per level, comma-separated.")
    ] = None,
    adversarial_weight: Annotated[
        float | None, typer.Option("--adversarial-weight", help="Patch-adversarial weight (0: off; default: preset).")
    ] = None,
    spacing: Annotated[
        float | None, typer.Option("--spacing", help="Model grid spacing in mm (default: preset).")
    ] = None,
    size: Annotated[str | None, typer.Option("--size", help="Model grid X,Y,Z in voxels (default: preset).")] = None,
    validation_subject: ValidateOpt = None,
    checkpoint_every: PresetCheckpointOpt = None,
    validate_every: PresetValidateOpt = None,
    augment: Annotated[
        str | None, typer.Option("--augment", help="none, flip or flip,affine (default: preset).")
    ] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the KL autoencoder that cola-diff models diffuse in (L1 + KL, optional patch-adversarial term).

    One autoencoder serves every contrast, target and cola-diff model trained on it; validation reports
    reconstruction PSNR/SSIM. Then: mrsynth train cola-diff --autoencoder OUT/checkpoint ...
    """
    from dataclasses import replace

    from mrsynth_cli.families.cola_diff.autoencoder import train_autoencoder
    from mrsynth_cli.families.cola_diff.config import load_preset
    from mrsynth_cli.paths import cache_dir

    preset = load_preset(config)
    changes: dict = {}
    if contrasts:
        changes["contrasts"] = tuple(contrasts)
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if channels is not None:
        changes["channels"] = _int_list(channels, "--channels", "32,64,64")
        changes["attention_levels"] = (False,) * len(changes["channels"])
    if adversarial_weight is not None:
        changes["adversarial_weight"] = adversarial_weight
    if spacing is not None:
        changes["spacing_mm"] = spacing
    if size is not None:
        changes["model_shape"] = _int_list(size, "--size", "80,96,80", length=3)
    ae_config = replace(preset.autoencoder, **changes)
    settings = _loop_settings(
        preset.autoencoder_training, max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, seed=seed,
        device=device, checkpoint_every=checkpoint_every, validate_every=validate_every, augment=augment,
    )
    ckpt, summary = train_autoencoder(
        data, ae_config, out, settings, validation_subjects=validation_subject, resume=resume,
        progress=sys.stderr.isatty(), cache_dir=cache_dir(),
    )
    typer.echo(f"trained on {', '.join(summary['train_subjects'])}; checkpoint: {ckpt}")
    typer.echo(f"next: mrsynth train cola-diff --autoencoder {ckpt} --data ... --target ... --out ...")


@app.command("cola-diff")
@boundary
def train_cola_diff_cmd(
    data: DataOpt,
    target: Annotated[str, typer.Option("--target", help="Contrast to synthesize.")],
    autoencoder: Annotated[Path, typer.Option("--autoencoder", help="Checkpoint folder of mrsynth train autoencoder.")],
    out: OutOpt,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--inputs", help="Input contrasts (default: T1, T1ce, T2, FLAIR minus the target)."),
    ] = None,
    config: ConfigOpt = "cpu",
    ablate: Annotated[
        str | None,
        typer.Option(
            "--ablate",
            help="Remove components (paper Table 2): comma list of network, guidance, auto-weight, filtering.",
        ),
    ] = None,
    max_steps: PresetStepsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    batch_size: PresetBatchOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate (default: preset).")] = None,
    ema: Annotated[float | None, typer.Option("--ema", help="EMA decay (default: preset).")] = None,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Latent network channels per level, comma-separated.")
    ] = None,
    guidance_subsets: Annotated[
        str | None, typer.Option("--guidance-subsets", help="each (masks per input subset, as at inference) or all.")
    ] = None,
    validation_subject: ValidateOpt = None,
    checkpoint_every: PresetCheckpointOpt = None,
    validate_every: PresetValidateOpt = None,
    augment: Annotated[str | None, typer.Option("--augment", help="none or flip (default: preset).")] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train a CoLa-Diff model (conditioned latent diffusion, L_eps + L_KL) for one target on a trained autoencoder.

    One model accepts any subset of its inputs. Import the result with:
    mrsynth weights import OUT/checkpoint --name NAME (the weights file holds the autoencoder too).
    """
    from mrsynth_cli.families.cola_diff.config import CoLaDiffConfig, load_preset
    from mrsynth_cli.families.cola_diff.train import train_cola_diff
    from mrsynth_cli.io.contrasts import Contrast, parse_contrast
    from mrsynth_cli.paths import cache_dir

    preset = load_preset(config)
    target_c = parse_contrast(target)
    if inputs:
        input_cs = [parse_contrast(c) for c in inputs]
    else:
        input_cs = [c for c in (Contrast.T1, Contrast.T1CE, Contrast.T2, Contrast.FLAIR) if c != target_c]
    model = dict(preset.model)
    if batch_size is not None:
        model["batch_size"] = batch_size
    if channels is not None:
        model["channels"] = _int_list(channels, "--channels", "64,128,128")
    if guidance_subsets is not None:
        model["guidance_subsets"] = guidance_subsets
    model_config = CoLaDiffConfig(
        target=target_c.value, inputs=tuple(c.value for c in input_cs), autoencoder=preset.autoencoder,
        spacing_mm=preset.autoencoder.spacing_mm, model_shape=preset.autoencoder.model_shape, **model,
    )
    if ablate:
        model_config = model_config.ablated([a.strip() for a in ablate.split(",") if a.strip()])
    settings = _loop_settings(
        preset.training, max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, ema_decay=ema, seed=seed,
        device=device, checkpoint_every=checkpoint_every, validate_every=validate_every, augment=augment,
    )
    ckpt, summary = train_cola_diff(
        data, model_config, autoencoder, out, settings, validation_subjects=validation_subject, resume=resume,
        progress=sys.stderr.isatty(), cache_dir=cache_dir(),
    )
    typer.echo(f"trained on {', '.join(summary['train_subjects'])}; checkpoint: {ckpt}")
    typer.echo(f"import it with: mrsynth weights import {ckpt} --name my-cola-diff-{target_c.value.lower()}")


@app.command("mrdiff")
@boundary
def train_mrdiff_cmd(
    data: DataOpt,
    target: Annotated[str, typer.Option("--target", help="Contrast to synthesize.")],
    out: OutOpt,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--inputs", help="Input contrasts, all needed at inference (default: T1, T2, FLAIR minus the "
                     "target)."),
    ] = None,
    config: Annotated[
        str, typer.Option("--config", help="mrdiff preset (cpu, paper) or a .toml file of the same layout.")
    ] = "cpu",
    ablate: Annotated[
        str | None,
        typer.Option("--ablate", help="Remove components (paper Fig. 4): comma list of physics, consistency."),
    ] = None,
    max_steps: PresetStepsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    batch_size: PresetBatchOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate (default: preset).")] = None,
    ema: Annotated[float | None, typer.Option("--ema", help="EMA decay (default: preset).")] = None,
    channels: Annotated[
        str | None, typer.Option("--channels", help="Encoder channels per level, comma-separated.")
    ] = None,
    tr: Annotated[
        list[str] | None,
        typer.Option("--tr", help="Repetition time of an input in seconds for every subject, contrast=value "
                     "(e.g. t1=0.45); overrides the sidecars."),
    ] = None,
    te: Annotated[list[str] | None, typer.Option("--te", help="Echo time of an input in seconds, as --tr.")] = None,
    ti: Annotated[
        list[str] | None,
        typer.Option("--ti", help="Inversion time of an inversion-recovery input in seconds, as --tr."),
    ] = None,
    validation_subject: ValidateOpt = None,
    checkpoint_every: PresetCheckpointOpt = None,
    validate_every: PresetValidateOpt = None,
    augment: Annotated[str | None, typer.Option("--augment", help="none or flip (default: preset).")] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train an MRDiff model (x_0-predicting diffusion with MR-physics regularisation, eq. 11) for one target.

    Every input's TR/TE (TI for FLAIR) comes from the subjects' JSON sidecars or from --tr/--te/--ti.
    Import the result with: mrsynth weights import OUT/checkpoint --name NAME
    """
    from mrsynth_cli.families.mrdiff.config import MRDiffConfig, load_preset
    from mrsynth_cli.families.mrdiff.physics import parse_acquisition_flags
    from mrsynth_cli.families.mrdiff.train import train_mrdiff
    from mrsynth_cli.io.contrasts import Contrast, parse_contrast
    from mrsynth_cli.paths import cache_dir

    preset = load_preset(config)
    target_c = parse_contrast(target)
    if inputs:
        input_cs = [parse_contrast(c) for c in inputs]
    else:
        input_cs = [c for c in (Contrast.T1, Contrast.T2, Contrast.FLAIR) if c != target_c]
    model = dict(preset.model)
    if batch_size is not None:
        model["batch_size"] = batch_size
    if channels is not None:
        model["channels"] = _int_list(channels, "--channels", "32,64,128")
        model["attention_levels"] = (False,) * len(model["channels"])
    model_config = MRDiffConfig(target=target_c.value, inputs=tuple(c.value for c in input_cs), **model)
    if ablate:
        model_config = model_config.ablated([a.strip() for a in ablate.split(",") if a.strip()])
    settings = _loop_settings(
        preset.training, max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, ema_decay=ema, seed=seed,
        device=device, checkpoint_every=checkpoint_every, validate_every=validate_every, augment=augment,
    )
    ckpt, summary = train_mrdiff(
        data, model_config, out, settings, acquisition_overrides=parse_acquisition_flags(tr, te, ti),
        validation_subjects=validation_subject, resume=resume, progress=sys.stderr.isatty(), cache_dir=cache_dir(),
    )
    typer.echo(f"trained on {', '.join(summary['train_subjects'])}; checkpoint: {ckpt}")
    typer.echo(f"import it with: mrsynth weights import {ckpt} --name my-mrdiff-{target_c.value.lower()}")


@app.command("aldm")
@boundary
def train_aldm_cmd(
    data: DataOpt,
    out: OutOpt,
    stage: Annotated[str, typer.Option("--stage", help="vqgan (autoencoder; MS-SPADE too when the cycle term is on), "
                                       "spade (MS-SPADE on the frozen autoencoder) or ldm (latent diffusion; "
                                       "its checkpoint holds all).")],
    autoencoder: Annotated[
        Path | None, typer.Option("--autoencoder", help="--stage spade: checkpoint folder of the vqgan stage.")
    ] = None,
    spade: Annotated[
        Path | None, typer.Option("--spade", help="--stage ldm: checkpoint folder of the spade stage.")
    ] = None,
    config: Annotated[
        str, typer.Option("--config", help="aldm preset (cpu, paper) or a .toml file of the same layout.")
    ] = "cpu",
    ablate: Annotated[
        str | None,
        typer.Option("--ablate", help="Paper Table 3 ablations, comma list: diffusion-only, palette, spade-only, kl "
                     "(kl: give it to --stage vqgan)."),
    ] = None,
    max_steps: PresetStepsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", help="AdamW learning rate (default: preset).")] = None,
    adversarial_weight: Annotated[
        float | None, typer.Option("--adversarial-weight", help="--stage vqgan: patch-adversarial weight (0: off).")
    ] = None,
    cycle_weight: Annotated[
        float | None, typer.Option("--cycle-weight", help="--stage vqgan: translation + cycle weight (0: off).")
    ] = None,
    validation_subject: ValidateOpt = None,
    checkpoint_every: PresetCheckpointOpt = None,
    validate_every: PresetValidateOpt = None,
    augment: Annotated[str | None, typer.Option("--augment", help="none or flip (default: preset).")] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train one stage of ALDM (3D, whole volumes): vqgan, then spade, then ldm.

    One model translates any of its contrasts into any other. Import the ldm stage's checkpoint with:
    mrsynth weights import OUT/checkpoint --name NAME (it holds the autoencoder and MS-SPADE too).
    """
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.families.aldm.config import STAGES, AldmConfig, load_preset
    from mrsynth_cli.families.aldm.train import train_aldm
    from mrsynth_cli.paths import cache_dir

    if stage not in STAGES:
        raise InputError(f"unknown --stage '{stage}'", f"use one of {', '.join(STAGES)}")
    previous = {"vqgan": None, "spade": autoencoder, "ldm": spade}[stage]
    preset = load_preset(config)
    model = dict(preset.model)
    if adversarial_weight is not None:
        model["ae_adversarial_weight"] = adversarial_weight
    if cycle_weight is not None:
        model["ae_cycle_weight"] = cycle_weight
    model_config = AldmConfig.from_dict(model)
    if ablate:
        model_config = model_config.ablated([a.strip() for a in ablate.split(",") if a.strip()])
    settings = _loop_settings(
        preset.training[stage], max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, seed=seed,
        device=device, checkpoint_every=checkpoint_every, validate_every=validate_every, augment=augment,
    )
    ckpt, summary = train_aldm(
        stage, data, model_config, out, settings, previous=previous, validation_subjects=validation_subject,
        resume=resume, progress=sys.stderr.isatty(), cache_dir=cache_dir(),
    )
    typer.echo(f"trained on {', '.join(summary['train_subjects'])}; checkpoint: {ckpt}")
    follow = {"vqgan": f"next: mrsynth train aldm --stage spade --autoencoder {ckpt} --data ... --out ...",
              "spade": f"next: mrsynth train aldm --stage ldm --spade {ckpt} --data ... --out ...",
              "ldm": f"import it with: mrsynth weights import {ckpt} --name my-aldm"}
    typer.echo(follow[stage])


@app.command("mmdm")
@boundary
def train_mmdm_cmd(
    data: DataOpt,
    out: OutOpt,
    target: Annotated[str, typer.Option("--target", help="Contrast to synthesize (the paper: TOF).")] = "TOF",
    inputs: Annotated[
        list[str] | None, typer.Option("--inputs", help="Source contrasts, one bridge each (default: T1 T2 FLAIR).")
    ] = None,
    config: Annotated[str, typer.Option("--config", help="mmdm preset (cpu, paper) or a .toml file of the same layout.")] = "cpu",
    variant: Annotated[
        str | None,
        typer.Option("--variant", help="mmdm (multi-path + fusion), bbdm (one bridge, one input) or concat "
                     "(one bridge from the first input, all inputs concatenated as condition); default: preset."),
    ] = None,
    max_steps: PresetStepsOpt = None,
    max_minutes: MaxMinutesOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Windows per step (default: preset).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate (default: preset).")] = None,
    no_mip_loss: Annotated[bool, typer.Option("--no-mip-loss", help="MSE only (ablation of eqs. 5-7).")] = False,
    no_naws: Annotated[
        bool, typer.Option("--no-naws", help="Plain sum of the losses (ablation of eqs. 8-11).")
    ] = False,
    validation_subject: ValidateOpt = None,
    checkpoint_every: PresetCheckpointOpt = None,
    validate_every: PresetValidateOpt = None,
    augment: Annotated[str | None, typer.Option("--augment", help="none or flip (default: preset).")] = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train MMDM (multi-path Brownian-bridge diffusion, 2.5D) for TOF-MRA from T1/T2/FLAIR.

    Every subject with the target and every input is used, except --validation-subject ones.
    Import the result with: mrsynth weights import OUT/checkpoint --name NAME
    """
    from mrsynth_cli.families.mmdm.config import MMDMConfig, load_preset
    from mrsynth_cli.families.mmdm.train import train_mmdm
    from mrsynth_cli.io.contrasts import Contrast, parse_contrast
    from mrsynth_cli.paths import cache_dir

    preset = load_preset(config)
    target_c = parse_contrast(target)
    input_cs = [parse_contrast(c) for c in inputs] if inputs else [Contrast.T1, Contrast.T2, Contrast.FLAIR]
    model = dict(preset.model)
    for key, value in (("variant", variant), ("batch_size", batch_size)):
        if value is not None:
            model[key] = value
    if no_mip_loss:
        model["mip_loss"] = False
    if no_naws:
        model["noise_adaptive"] = False
    model_config = MMDMConfig(target=target_c.value, inputs=tuple(c.value for c in input_cs), **model)
    settings = _loop_settings(
        preset.training, max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, seed=seed, device=device,
        checkpoint_every=checkpoint_every, validate_every=validate_every, augment=augment,
    )
    ckpt, summary = train_mmdm(
        data, model_config, out, settings, validation_subjects=validation_subject, resume=resume,
        progress=sys.stderr.isatty(), cache_dir=cache_dir(),
    )
    typer.echo(f"trained on {', '.join(summary['train_subjects'])}; checkpoint: {ckpt}")
    typer.echo(f"import it with: mrsynth weights import {ckpt} --name my-mmdm-{target_c.value.lower()}")


def _int_list(text: str, option: str, example: str, length: int | None = None) -> tuple[int, ...]:
    from mrsynth_cli.errors import InputError

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise InputError(f"{option} '{text}' is not a list of integers", f"e.g. {option} {example}") from exc
    if length is not None and len(values) != length:
        raise InputError(f"{option} '{text}' is not {length} integers", f"e.g. {option} {example}")
    return values


@app.command("distill")
@boundary
def train_distill_cmd(
    data: DataOpt,
    out: OutOpt,
    model: Annotated[
        str | None, typer.Option("--model", help="Teacher: a model in the manifest (see mrsynth weights list).")
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Teacher: a checkpoint folder written by mrsynth train.")
    ] = None,
    to_steps: Annotated[int, typer.Option("--to-steps", min=1, help="Sampling steps of the last student.")] = 4,
    from_steps: Annotated[
        int | None,
        typer.Option("--from-steps", min=2, help="Teacher DDIM steps of the first round (default 64; a student "
                     "teacher: its own steps). Must be --to-steps times a power of two."),
    ] = None,
    steps_per_round: Annotated[int, typer.Option("--steps-per-round", min=1, help="Optimiser steps per round.")] = 500,
    minutes_per_round: Annotated[
        float | None, typer.Option("--minutes-per-round", help="Stop each round after this many minutes.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Batch (default: the teacher's).")
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    ema: Annotated[float, typer.Option("--ema", help="EMA decay of each round's student.")] = 0.995,
    weighting: Annotated[
        str, typer.Option("--weighting", help="Loss weighting: truncated-snr (max(SNR, 1)) or snr+1.")
    ] = "truncated-snr",
    validation_subject: ValidateOpt = None,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")
    ] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out (same options).")] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Progressive distillation (Salimans & Ho 2022) of a diffusion model into a few-step student.

    Each round halves the step count (e.g. 64 -> 32 -> 16 -> 8 -> 4): the student starts from its
    teacher's weights, predicts v, and learns to match two deterministic DDIM steps of the teacher in
    one. Every round is checkpointed in OUT/round-R-Nsteps/ (--resume continues the latest); the last
    student is also OUT/checkpoint. Its config records the teacher's sha256 and step count. Import it
    with: mrsynth weights import OUT/checkpoint --name NAME; synthesize then uses it for
    --sampler distilled, and for --sampler auto on the CPU.
    """
    from mrsynth_cli.distill.rounds import DistillSettings, check_out_dir, check_plan, progressive_distill
    from mrsynth_cli.distill.task import distillation_task_for, teacher_from_checkpoint, teacher_from_manifest
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.paths import cache_dir
    from mrsynth_cli.paths import weights_dir as default_weights_dir

    if (model is None) == (teacher is None):
        raise InputError(
            "give the teacher as exactly one of --model NAME or --teacher CHECKPOINT", "e.g. --model cola-diff-flair"
        )
    settings = DistillSettings(
        to_steps=to_steps, from_steps=from_steps, steps_per_round=steps_per_round,
        minutes_per_round=minutes_per_round, learning_rate=lr, ema_decay=ema, weighting=weighting,
        checkpoint_every=checkpoint_every, seed=seed, device=device,
    )
    if teacher is not None:
        source = teacher_from_checkpoint(teacher)
    else:
        source = teacher_from_manifest(model, Path(weights_dir) if weights_dir else default_weights_dir())
    check_out_dir(out, check_plan(source.config, settings), resume)  # fail before the data is loaded
    task = distillation_task_for(
        source, data, device=device, validation_subjects=validation_subject, cache_dir=cache_dir(),
        batch_size=batch_size,
    )
    ckpt, summary = progressive_distill(task, out, settings, resume=resume, progress=sys.stderr.isatty())
    for entry in summary["rounds"]:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in entry["validation"].items())
        typer.echo(f"round {entry['round']}: {entry['steps']} steps" + (f" (validation {scores})" if scores else ""))
    typer.echo(f"student: {ckpt}")
    name = f"{source.name if model else 'my-model'}-distilled-{to_steps}"
    typer.echo(f"import it with: mrsynth weights import {ckpt} --name {name}")
