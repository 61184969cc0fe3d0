"""Samplers (one algorithm per file), the noise schedules and the one denoising loop.

``SAMPLERS`` is the explicit table of sampler names; :func:`make_sampler` builds one by name:

* ``"ddpm"``: :class:`~mrsynth_cli.sampling.ddpm.DDPMSampler` (ancestral, any respacing);
* ``"ddim"``: :class:`~mrsynth_cli.sampling.ddim.DDIMSampler` (Song et al. 2021, ``eta``);
* ``"fast"``: :class:`~mrsynth_cli.sampling.fast.FastSampler` (Kong & Ping 2021, STEP/VAR, ``kappa``);
* ``"bridge"``: :class:`~mrsynth_cli.sampling.bridge.BrownianBridgeSampler` (BBDM/MMDM);
* ``"distilled"``: :class:`~mrsynth_cli.sampling.distilled.DistilledSampler` (a progressively distilled
  student's own grid, v-prediction, deterministic).

The first three and ``distilled`` take a :class:`NoiseSchedule`, the bridge a :class:`BridgeSchedule`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mrsynth_cli.sampling.base import BaseSampler, Sampler, SamplerConfigError, StepOutput, check_choice, draw_noise
from mrsynth_cli.sampling.bridge import BridgeSchedule, BrownianBridgeSampler
from mrsynth_cli.sampling.ddim import DDIMSampler
from mrsynth_cli.sampling.ddpm import DDPMSampler
from mrsynth_cli.sampling.distilled import DistilledSampler
from mrsynth_cli.sampling.fast import FastSampler
from mrsynth_cli.sampling.loop import initial_noise, sample
from mrsynth_cli.sampling.schedule import NoiseSchedule, respace

__all__ = [
    "SAMPLERS",
    "BaseSampler",
    "BridgeSchedule",
    "BrownianBridgeSampler",
    "DDIMSampler",
    "DDPMSampler",
    "DistilledSampler",
    "FastSampler",
    "NoiseSchedule",
    "Sampler",
    "SamplerConfigError",
    "StepOutput",
    "draw_noise",
    "initial_noise",
    "make_sampler",
    "respace",
    "sample",
]

SAMPLERS: dict[str, type[BaseSampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "fast": FastSampler,
    "bridge": BrownianBridgeSampler,
    "distilled": DistilledSampler,
}


def make_sampler(
    name: str, schedule_or_config: NoiseSchedule | BridgeSchedule | Mapping[str, Any], **kwargs: Any
) -> BaseSampler:
    """Build the sampler ``name`` over a schedule.

    Args:
        name: a key of :data:`SAMPLERS`.
        schedule_or_config: a :class:`NoiseSchedule` (ddpm, ddim, fast) or :class:`BridgeSchedule` (bridge),
            or a mapping of that schedule's constructor arguments.
        **kwargs: the sampler's keyword arguments (e.g. ``prediction_type``, ``eta``, ``num_inference_steps``).

    Raises:
        SamplerConfigError: unknown sampler name (with a did-you-mean), or a schedule of the wrong kind.
    """
    check_choice("sampler", name, list(SAMPLERS))
    schedule = schedule_or_config
    if isinstance(schedule, Mapping):
        schedule_cls = BridgeSchedule if name == "bridge" else NoiseSchedule
        try:
            schedule = schedule_cls(**schedule)
        except TypeError as exc:
            raise SamplerConfigError(
                f"bad {schedule_cls.__name__} config: {exc}", "check the schedule's keys"
            ) from None
    sampler_cls = SAMPLERS[name]
    allowed = [p for p in inspect.signature(sampler_cls).parameters if p != "schedule"]
    for key in kwargs:
        check_choice(f"{name} sampler option", key, allowed)
    return sampler_cls(schedule, **kwargs)
