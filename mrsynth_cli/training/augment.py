"""Training augmentation shared by every family, drawn from the loop's numpy ``Generator``.

Geometric transforms move inputs, target and mask together (a synthesis model must learn where
things are, not a shifted copy); intensity transforms touch the inputs only, so the model learns to
tolerate scanner and protocol differences in what it is given while its output scale stays that of
the training targets. Works on 2D slices and 3D volumes alike (``spatial_dims`` follows the arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mrsynth_cli.errors import InputError

__all__ = ["AUGMENTATIONS", "AugmentSettings", "augment_sample"]

#: Names accepted by ``--augment`` (comma-separated), in the order they are applied.
AUGMENTATIONS = ("flip", "affine", "gamma", "noise")


@dataclass(frozen=True)
class AugmentSettings:
    """Which augmentations run and how strong they are.

    Attributes:
        enabled: names from :data:`AUGMENTATIONS`.
        probability: chance that each enabled transform is applied to a sample (flip: 0.5 always).
        rotate_deg: largest in-plane rotation (first two axes).
        scale: largest relative zoom, e.g. 0.1 for 0.9-1.1.
        gamma: log-uniform gamma range applied to inputs in their scaled [0, 1] range.
        noise_std: largest Gaussian noise standard deviation (scaled units) added to inputs.
    """

    enabled: tuple[str, ...] = ("flip",)
    probability: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.03

    @classmethod
    def parse(cls, spec: str) -> AugmentSettings:
        """From ``--augment``: ``none``, ``all`` or a comma-separated subset of :data:`AUGMENTATIONS`."""
        spec = spec.strip().lower()
        if spec in ("", "none"):
            return cls(enabled=())
        if spec == "all":
            return cls(enabled=AUGMENTATIONS)
        names = tuple(n.strip() for n in spec.split(",") if n.strip())
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise InputError(
                f"unknown augmentation(s) {', '.join(unknown)} in --augment '{spec}'",
                f"use none, all, or a comma-separated subset of {', '.join(AUGMENTATIONS)}",
            )
        return cls(enabled=tuple(n for n in AUGMENTATIONS if n in names))

    def to_spec(self) -> str:
        return ",".join(self.enabled) or "none"


def _affine_matrix(rng: np.random.Generator, settings: AugmentSettings, ndim: int) -> np.ndarray:
    """Output → input coordinate matrix: a rotation in the first two axes and an isotropic zoom."""
    angle = np.deg2rad(rng.uniform(-settings.rotate_deg, settings.rotate_deg))
    zoom = rng.uniform(1.0 - settings.scale, 1.0 + settings.scale)
    matrix = np.eye(ndim)
    c, s = np.cos(angle), np.sin(angle)
    matrix[:2, :2] = [[c, -s], [s, c]]
    return matrix / zoom


def _warp(array: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    centre = (np.array(array.shape) - 1) / 2.0
    offset = centre - matrix @ centre
    return ndimage.affine_transform(array, matrix, offset=offset, order=order, mode="constant", cval=0.0)


def augment_sample(
    inputs: list[np.ndarray],
    targets: list[np.ndarray],
    mask: np.ndarray,
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Augment one training sample (every array has the same spatial shape, axis 0 is left-right).

    Args:
        inputs: input images in the scaled range (absent inputs may be all-zero: they stay zero).
        targets: target images (geometric transforms only).
        mask: brain mask (geometric transforms only, stays binary).
        rng: the training loop's generator (so that ``--resume`` replays identically).
        settings: what to apply.
    """
    enabled = settings.enabled
    if "flip" in enabled and rng.random() < 0.5:
        inputs = [a[::-1] for a in inputs]
        targets = [a[::-1] for a in targets]
        mask = mask[::-1]
    if "affine" in enabled and rng.random() < settings.probability:
        matrix = _affine_matrix(rng, settings, mask.ndim)
        inputs = [_warp(np.asarray(a, np.float32), matrix, 1) for a in inputs]
        targets = [_warp(np.asarray(a, np.float32), matrix, 1) for a in targets]
        mask = _warp(np.asarray(mask, np.float32), matrix, 1) > 0.5
    if "gamma" in enabled:
        low, high = np.log(settings.gamma[0]), np.log(settings.gamma[1])
        inputs = [
            np.power(np.clip(a, 0.0, None), np.exp(rng.uniform(low, high))).astype(np.float32)
            if rng.random() < settings.probability else a
            for a in inputs
        ]
    if "noise" in enabled:
        noisy = []
        for a in inputs:
            if rng.random() < settings.probability and np.any(a):
                sigma = rng.uniform(0.0, settings.noise_std)
                a = (a + rng.normal(0.0, sigma, size=a.shape) * (a != 0)).astype(np.float32)
            noisy.append(a)
        inputs = noisy
    as_array = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return [as_array(a) for a in inputs], [as_array(a) for a in targets], np.ascontiguousarray(mask)
