"""The whole synthesis flow on one screen:

inputs -> routing (manifest) -> weights (sha256-verified) -> preprocessing (registration, masks,
model grid, intensity) -> family adapter (sampler) -> undo preprocessing -> NIfTI on the reference
grid, labelled synthetic, with a JSON sidecar.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrsynth_cli import __version__
from mrsynth_cli.errors import InputError, RuntimeFailure
from mrsynth_cli.io.atomic import check_writable, write_json_atomic
from mrsynth_cli.io.contrasts import Contrast, nifti_stem
from mrsynth_cli.io.volume import save_volume, synthetic_descrip

__all__ = ["SynthesisRequest", "synthesize", "output_paths"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthesisRequest:
    """Everything ``mrsynth synthesize`` was asked to do."""

    inputs: dict[Contrast, Path]
    targets: list[Contrast]
    out: Path | None = None
    out_dir: Path | None = None
    outputs: dict[Contrast, Path] | None = None  # explicit path per target (batch's BIDS names)
    model: str | None = None
    sampler: str = "auto"
    steps: int | None = None
    samples: int = 1
    uncertainty: Path | None = None
    seed: int = 0
    device: str = "auto"
    reference: Contrast | None = None
    registration: str = "auto"
    transforms: tuple[tuple[Contrast, Path], ...] = ()
    segmentation: str = "auto"
    force: bool = False
    weights_dir: Path | None = None
    allow_download: bool = False
    progress: bool = False
    extra_sidecar: dict[str, Any] = field(default_factory=dict)
    # Per-input TR/TE/TI overrides in seconds (--tr/--te/--ti); only families that model them read them.
    acquisition: dict[Contrast, dict[str, float]] = field(default_factory=dict)


def output_paths(request: SynthesisRequest, reference_path: Path) -> dict[Contrast, Path]:
    """Where each target goes: ``--out`` for one target, else ``--out-dir/<ref>_desc-synth_<target>.nii.gz``."""
    if request.outputs is not None:
        missing = [str(t) for t in request.targets if t not in request.outputs]
        if missing:
            raise InputError(f"no output path for {', '.join(missing)}", "report a bug")
        return {t: request.outputs[t] for t in request.targets}
    if request.out is not None:
        if not str(request.out).endswith((".nii", ".nii.gz")):
            raise InputError(f"output {request.out} is not a NIfTI file name", "end it in .nii.gz (or .nii)")
        if len(request.targets) > 1:
            raise InputError("--out names one file but several targets were asked for", "use --out-dir instead")
        return {request.targets[0]: request.out}
    if request.out_dir is None:
        raise InputError("no output given", "pass --out FILE.nii.gz (one target) or --out-dir FOLDER")
    stem = nifti_stem(reference_path)
    return {t: request.out_dir / f"{stem}_desc-synth_{t.value}.nii.gz" for t in request.targets}


def sidecar_path(nifti: Path) -> Path:
    return nifti.with_name(nifti_stem(nifti) + ".json")


def synthesize(
    request: SynthesisRequest, model_cache: dict[tuple[str, str], Any] | None = None
) -> dict[Contrast, Path]:
    """Run the whole flow; returns the written file per target.

    ``model_cache`` (optional, e.g. one per ``mrsynth batch`` run) keeps loaded models between calls:
    each model's files are verified and its network built once, not once per subject.

    Raises:
        MrsynthError: any bad input, missing/tampered weights, or a runtime failure, before any output
            file is created (outputs appear atomically at the end).
    """
    import torch

    from mrsynth_cli.devices import is_out_of_memory, resolve_device
    from mrsynth_cli.distill.select import pick_students, routable
    from mrsynth_cli.paths import weights_dir as default_weights_dir
    from mrsynth_cli.preprocessing.run import PreprocessOptions, preprocess
    from mrsynth_cli.registry import get_family, load_adapter
    from mrsynth_cli.routing import choose_models
    from mrsynth_cli.training.checkpoint import load_weights
    from mrsynth_cli.weights.manifest import all_entries
    from mrsynth_cli.weights.store import ensure_files

    started = time.monotonic()
    if not request.targets:
        raise InputError("no --target given", "name the contrast to synthesize, e.g. --target flair")
    reference_contrast = request.reference or next(iter(request.inputs))
    if reference_contrast not in request.inputs:
        raise InputError(f"--ref {reference_contrast} is not among the inputs", "give --ref one of the --in contrasts")
    outputs = output_paths(request, request.inputs[reference_contrast])
    for path in outputs.values():  # fail before any work if an output exists
        check_writable(path, force=request.force)
        check_writable(sidecar_path(path), force=request.force)
    if request.uncertainty is not None:
        check_writable(request.uncertainty, force=request.force)
    for path in request.inputs.values():
        if not Path(path).exists():
            raise InputError(f"input {path} does not exist", "check the path (and the working folder)")

    weights_root = Path(request.weights_dir) if request.weights_dir else default_weights_dir()
    entries = all_entries(weights_root)
    # TR/TE given: prefer a physics-based model.
    chosen = choose_models(routable(entries, request.model), set(request.inputs), request.targets,
                           model=request.model, physics=bool(request.acquisition))
    device = resolve_device(request.device)
    # --sampler auto/distilled may swap a teacher for its distilled student (mrsynth_cli.distill.select).
    chosen, samplers = pick_students(entries, chosen, request.sampler, request.steps, device.type)
    generator = torch.Generator(device="cpu").manual_seed(request.seed)

    fallback_from: str | None = None
    written: dict[Contrast, Path] = {}
    by_model: dict[str, list[Contrast]] = {}
    for target, entry in chosen.items():
        by_model.setdefault(entry.name, []).append(target)
    entry_by_name = {e.name: e for e in chosen.values()}
    results: dict[Contrast, tuple[np.ndarray, Any, Any]] = {}
    sampling_used: dict[str, tuple[str, int | None]] = {}  # model name -> (sampler, steps) that ran
    acquisition_used: dict[str, dict] = {}  # model name -> the TR/TE/TI it was given (physics-based families)
    for name, targets in by_model.items():
        entry = entry_by_name[name]
        spec = get_family(entry.family)
        if request.samples > 1 and not spec.stochastic:
            raise InputError(
                f"--samples {request.samples} was given but model {entry.name} is deterministic",
                "drop --samples (it applies to diffusion models)",
            )
        adapter = load_adapter(entry.family)
        config = adapter.config_from_dict(entry.config)
        extra_kwargs: dict[str, Any] = {}
        if hasattr(adapter, "resolve_acquisition"):  # e.g. mrdiff: each input's TR/TE, from flags or sidecars
            acquisition = adapter.resolve_acquisition(config, request.inputs, request.acquisition)
            extra_kwargs["acquisition"] = acquisition
            acquisition_used[entry.name] = adapter.acquisition_record(acquisition)
        key = (entry.name, str(device))
        if model_cache is not None and key in model_cache:
            weights, model = model_cache[key]
        else:
            files = ensure_files(entry, weights_root, allow_download=request.allow_download)
            weights = load_weights(files[0])
            model = adapter.load_model(config, weights, device)
            if model_cache is not None:
                model_cache[key] = (weights, model)
        prep_kwargs = adapter.preprocess_options(config)
        if prep_kwargs.get("segmentation", "none") != "none" and request.segmentation != "auto":
            prep_kwargs["segmentation"] = request.segmentation  # the user chose how to make tissue masks
        options = PreprocessOptions(
            reference=reference_contrast, registration=request.registration, transforms=request.transforms,
            **prep_kwargs,
        )
        model_inputs = {c: p for c, p in request.inputs.items() if c in entry.inputs or c == reference_contrast}
        prep = preprocess(model_inputs, options)
        draws = []
        for _ in range(request.samples):
            try:
                draws.append(adapter.synthesize(
                    model, config, prep, targets, sampler=samplers[name], steps=request.steps,
                    generator=generator, device=device, progress=request.progress, **extra_kwargs,
                ))
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc) or device.type == "cpu":
                    raise
                # map_batches already went down to one slice per batch: the model itself does not fit.
                log.warning("%s ran out of memory even one slice at a time; continuing on the CPU (slower)", device)
                fallback_from = str(device)
                device = torch.device("cpu")
                model = adapter.load_model(config, weights, device)
                draws.append(adapter.synthesize(
                    model, config, prep, targets, sampler=samplers[name], steps=request.steps,
                    generator=generator, device=device, progress=request.progress, **extra_kwargs,
                ))
        for target in targets:
            stack = np.stack([d[target] for d in draws])
            results[target] = (stack, prep, entry)
        # What really ran: "auto" resolves to the model's own default sampler and step count.
        chosen_sampler = samplers[name]
        if chosen_sampler == "auto":
            chosen_sampler = getattr(config, "sampler", chosen_sampler)
        sampling_used[name] = (
            (chosen_sampler, request.steps or getattr(config, "sampling_steps", None)) if spec.stochastic
            else ("none (deterministic)", None)
        )

    for target, (stack, prep, entry) in results.items():
        mean = stack.mean(0)
        native = prep.record.to_native(mean, order=1)
        native = np.where(prep.brain_mask.data > 0, np.clip(native, 0.0, None), 0.0).astype(np.float32)
        out = outputs[target]
        save_volume(native, prep.reference, out, descrip=synthetic_descrip(target, entry.name), force=request.force)
        written[target] = out
        if request.uncertainty is not None and len(stack) > 1:
            std = prep.record.to_native(stack.std(0), order=1)
            save_volume(np.where(prep.brain_mask.data > 0, std, 0.0), prep.reference, request.uncertainty,
                        descrip=synthetic_descrip(target, f"{entry.name} std"), force=request.force)
        sidecar = {
            "Description": f"Synthetic {target.description} image generated by mrsynth; NOT an acquired image.",
            "Synthetic": True,
            "Sources": [str(Path(p)) for p in request.inputs.values()],
            "SourceContrasts": [str(c) for c in request.inputs],  # one per Sources entry (QC report labels)
            "Target": str(target),
            "GeneratedBy": [{"Name": "mrsynth", "Version": __version__}],
            "Model": {
                "Name": entry.name, "Family": entry.family, "Version": entry.version,
                "Files": [{"name": f.name, "sha256": f.sha256} for f in entry.files],
                "Config": entry.config,
            },
            "Sampler": sampling_used[entry.name][0], "Steps": sampling_used[entry.name][1],
            "Samples": request.samples, "Seed": request.seed, "Device": str(device),
            "DeviceFallback": f"{fallback_from} ran out of memory; finished on the CPU" if fallback_from else None,
            "Backends": prep.record.backends,
            "Reference": str(prep.reference.path),
            "Units": "arbitrary: 0-1 spans the 0.5-99.5 percentile range inside the brain of the training data",
            "Preprocessing": prep.record.to_dict(),
            "SecondsElapsed": round(time.monotonic() - started, 2),
            **({"Uncertainty": str(request.uncertainty)} if request.uncertainty is not None and len(stack) > 1 else {}),
            **({"AcquisitionParameters": acquisition_used[entry.name]} if entry.name in acquisition_used else {}),
            **request.extra_sidecar,
        }
        write_json_atomic(sidecar_path(out), sidecar)
    if not written:
        raise RuntimeFailure("nothing was synthesized", "report a bug")
    return written
