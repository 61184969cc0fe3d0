"""Compose the preprocessing steps for one subject: native files in, model-ready arrays and a record out.

The steps, in order: load and validate every input; bring every input onto the reference grid
(registration, or headers only, or nothing); brain mask; optional tissue masks; canonical
orientation, optional resampling and a brain-centred crop/pad to the model's size; percentile
intensity scaling inside the brain. Everything needed to go back is kept in a
:class:`~mrsynth_cli.preprocessing.record.PreprocessRecord`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrsynth_cli.errors import ContrastError, InputError
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.io.volume import Volume, check_same_grid, load_volume
from mrsynth_cli.preprocessing.record import CropPad, IntensityScale, PreprocessRecord, Reorient, Resample

__all__ = ["PreprocessOptions", "PreprocessResult", "preprocess", "REGISTRATION_CHOICES", "SEGMENTATION_CHOICES"]

log = logging.getLogger(__name__)

REGISTRATION_CHOICES = ("auto", "fsl", "sitk", "none")
SEGMENTATION_CHOICES = ("auto", "fsl", "embedded", "none")
BRAIN_MASK_CHOICES = ("auto", "fsl", "embedded")


@dataclass(frozen=True)
class PreprocessOptions:
    """How to preprocess.

    Attributes:
        reference: the contrast whose grid outputs take (default: the first input).
        registration: ``auto`` (FLIRT if FSL is found, else SimpleITK), ``fsl``, ``sitk`` or ``none``.
        dof: 6 (rigid) or 12 (affine) degrees of freedom.
        brain_mask: ``auto``, ``fsl`` or ``embedded`` (already skull-stripped inputs are detected).
        segmentation: tissue masks: ``auto`` (FAST if FSL is found, else the embedded HMRF-EM),
            ``fsl``, ``embedded`` or ``none``. Off by default here because it costs 20-60 s per 1 mm
            volume: ``mrsynth preprocess`` asks for it, and ``synthesize`` only when the model's
            family uses tissue masks (its adapter's ``preprocess_options``).
        spacing_mm: resample the model grid to this isotropic spacing (``None`` keeps the native one).
        model_shape: crop/pad the model grid to this shape around the brain (``None``: brain box).
        transforms: ``(contrast, file)`` pairs: use these existing transforms (ITK or FSL ``.mat``)
            instead of registering those inputs.
    """

    reference: Contrast | None = None
    registration: str = "auto"
    dof: int = 6
    brain_mask: str = "auto"
    segmentation: str = "none"
    spacing_mm: float | None = None
    model_shape: tuple[int, int, int] | None = None
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    transforms: tuple[tuple[Contrast, Path], ...] = ()

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("registration", self.registration, REGISTRATION_CHOICES),
            ("segmentation", self.segmentation, SEGMENTATION_CHOICES),
            ("brain mask", self.brain_mask, BRAIN_MASK_CHOICES),
        ):
            if value not in choices:
                raise InputError(f"unknown {name} method '{value}'", f"use one of {', '.join(choices)}")
        if self.dof not in (6, 12):
            raise InputError(f"--dof {self.dof} is not supported", "use 6 (rigid) or 12 (affine)")


@dataclass
class PreprocessResult:
    """Inputs on the reference grid and in model space, masks, and the record that undoes it all."""

    reference: Volume
    native: dict[Contrast, Volume]  # every input on the reference grid
    brain_mask: Volume
    model_inputs: dict[Contrast, np.ndarray]  # canonical, resampled, cropped, intensity-scaled
    model_brain_mask: np.ndarray
    record: PreprocessRecord
    tissues: Any = None  # TissueResult when segmentation ran
    registrations: dict[Contrast, Any] = field(default_factory=dict)


def _load_inputs(inputs: dict[Contrast, Path]) -> dict[Contrast, Volume]:
    if not inputs:
        raise InputError("no input volumes were given", "pass at least one --in contrast=path")
    return {contrast: load_volume(path, contrast) for contrast, path in inputs.items()}


def _align(
    volumes: dict[Contrast, Volume], reference: Contrast, options: PreprocessOptions, record: PreprocessRecord
) -> tuple[dict[Contrast, Volume], dict[Contrast, Any]]:
    """Bring every input onto the reference grid and record how."""
    fixed = volumes[reference]
    given = dict(options.transforms)
    for contrast, path in given.items():
        if contrast not in volumes or contrast == reference:
            raise InputError(
                f"--transform {contrast}={path} names {'the reference' if contrast == reference else 'no input'}",
                "give transforms for the non-reference inputs only (moving image -> reference)",
            )
    if options.registration == "none" and not given:
        check_same_grid(
            list(volumes.values()),
            hint="with --registration none every input must be on one grid; use --registration auto to align them",
        )
        record.backends["registration"] = "none"
        return dict(volumes), {}
    from mrsynth_cli.preprocessing.registration import apply_transform_file, register

    aligned: dict[Contrast, Volume] = {reference: fixed}
    results: dict[Contrast, Any] = {}
    backends = set()
    for contrast, moving in volumes.items():
        if contrast == reference:
            continue
        if contrast in given:
            result = apply_transform_file(moving, fixed, given[contrast])
        else:
            result = register(moving, fixed, method=options.registration, dof=options.dof)
        aligned[contrast] = result.resampled
        results[contrast] = result
        backends.add(result.backend)
        record.transforms[str(contrast)] = result.to_dict()
    record.backends["registration"] = ",".join(sorted(backends)) or "none (single input)"
    return aligned, results


def preprocess(inputs: dict[Contrast, Path], options: PreprocessOptions | None = None) -> PreprocessResult:
    """Run every preprocessing step for one subject.

    Args:
        inputs: contrast -> NIfTI path; the first is the reference unless ``options.reference``.
        options: methods and the model grid.

    Raises:
        InputError: any bad input, with the file named.
    """
    options = options or PreprocessOptions()
    if options.segmentation != "none":
        from mrsynth_cli.preprocessing.tissues import check_method

        check_method(options.segmentation)  # e.g. --segmentation fsl without FSL: say so before the slow steps
    volumes = _load_inputs(inputs)
    reference = options.reference or next(iter(volumes))
    if reference not in volumes:
        raise ContrastError(
            f"the reference contrast {reference} is not among the inputs ({', '.join(map(str, volumes))})",
            "give --ref one of the input contrasts",
        )
    ref_volume = volumes[reference]
    record = PreprocessRecord(
        reference=str(ref_volume.path), reference_shape=list(ref_volume.shape), reference_affine=ref_volume.affine.tolist()
    )
    aligned, registrations = _align(volumes, reference, options, record)

    from mrsynth_cli.preprocessing.brain_mask import brain_mask

    mask_result = brain_mask(list(aligned.values()), method=options.brain_mask)
    mask_volume = mask_result.mask
    record.backends["brain_mask"] = mask_result.method

    tissues = None
    if options.segmentation != "none":
        from mrsynth_cli.preprocessing.tissues import segment_tissues

        tissues = segment_tissues(list(aligned.values()), mask_volume, method=options.segmentation)
        record.backends["tissues"] = tissues.method

    # Geometry: canonical orientation, optional resampling, crop/pad around the brain.
    reorient = Reorient.to_canonical(ref_volume.affine, ref_volume.shape)
    record.geometry.append(reorient)
    mask = reorient.forward(mask_volume.data.astype(np.float32))
    if options.spacing_mm is not None:
        canonical_spacing = tuple(float(v) for v in np.linalg.norm(reorient.forward_affine(ref_volume.affine)[:3, :3], axis=0))
        resample = Resample.to_spacing(mask.shape, canonical_spacing, (options.spacing_mm,) * 3)
        record.geometry.append(resample)
        mask = resample.forward(mask, order=1)
    crop = CropPad.around_mask(mask > 0.5, options.model_shape)
    record.geometry.append(crop)
    model_mask = crop.forward(mask) > 0.5

    model_inputs: dict[Contrast, np.ndarray] = {}
    for contrast, volume in aligned.items():
        data = record.to_model_space(volume.data, order=1)
        scale = IntensityScale.from_percentiles(data, model_mask, options.lower_percentile, options.upper_percentile)
        record.intensity[str(contrast)] = scale
        model_inputs[contrast] = np.where(model_mask, scale.forward(data), 0.0).astype(np.float32)
    return PreprocessResult(
        reference=ref_volume,
        native=aligned,
        brain_mask=mask_volume,
        model_inputs=model_inputs,
        model_brain_mask=model_mask,
        record=record,
        tissues=tissues,
        registrations=registrations,
    )
