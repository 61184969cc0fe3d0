"""``mrsynth synthesize``: make a missing contrast from the ones a scan has."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mrsynth_cli.cli.options import (
    DeviceOpt,
    ForceOpt,
    InputsOpt,
    RegistrationOpt,
    SeedOpt,
    SegmentationOpt,
    TransformOpt,
    parse_transform_specs,
    WeightsDirOpt,
)

__all__ = ["synthesize"]


def synthesize(
    inputs: InputsOpt,
    target: Annotated[list[str], typer.Option("--target", help="Contrast(s) to synthesize, e.g. flair (several may follow).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output .nii.gz (one target).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Output folder (one file per target).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Use this manifest model instead of the automatic choice.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="Sampler for diffusion models: auto, ddpm, ddim, fast, bridge.")] = "auto",
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (diffusion models).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Draws to average (diffusion models); see --uncertainty.")] = 1,
    uncertainty: Annotated[Path | None, typer.Option("--uncertainty", help="Write the voxel-wise std of the draws here.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    ref: Annotated[str | None, typer.Option("--ref", help="Contrast whose grid the output takes (default: the first input).")] = None,
    registration: RegistrationOpt = "auto",
    transform: TransformOpt = None,
    segmentation: SegmentationOpt = "auto",
    force: ForceOpt = False,
    weights_dir: WeightsDirOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network (also MRSYNTH_OFFLINE=1).")] = False,
) -> None:
    """Synthesize TARGET from the inputs; the output lies on the reference input's grid, labelled synthetic.

    Example: mrsynth synthesize --in t1=T1.nii.gz t2=T2.nii.gz --target flair --out FLAIR_synth.nii.gz

    A JSON sidecar beside the output records the sources, model (name, version, sha256), sampler,
    steps, seed, device and preprocessing backends. Nothing leaves this machine.
    """
    import os

    if offline:
        os.environ["MRSYNTH_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
    from mrsynth_cli.errors import InputError
    from mrsynth_cli.io.contrasts import parse_contrast, parse_input_spec
    from mrsynth_cli.pipeline import SynthesisRequest
    from mrsynth_cli.pipeline import synthesize as run

    parsed: dict = {}
    for spec in inputs:
        contrast, path = parse_input_spec(spec)
        if contrast in parsed:
            raise InputError(f"two inputs are {contrast}: {parsed[contrast]} and {path}", "give one file per contrast")
        parsed[contrast] = path
    targets = [parse_contrast(t) for t in target]
    request = SynthesisRequest(
        inputs=parsed, targets=targets, out=out, out_dir=out_dir, model=model, sampler=sampler, steps=steps,
        samples=samples, uncertainty=uncertainty, seed=seed, device=device,
        reference=parse_contrast(ref) if ref else None, registration=registration, segmentation=segmentation,
        transforms=parse_transform_specs(transform),
        force=force, weights_dir=weights_dir, progress=sys.stderr.isatty(),
    )
    for contrast, path in run(request).items():
        typer.echo(f"wrote synthetic {contrast}: {path}")
