"""Training augmentation: geometry moves everything together, intensity touches inputs only."""

from __future__ import annotations

import numpy as np
import pytest

from mrsynth_cli.errors import InputError
from mrsynth_cli.training.augment import AUGMENTATIONS, AugmentSettings, augment_sample


def _sample(ndim: int = 2):
    rng = np.random.default_rng(3)
    shape = (32, 40) if ndim == 2 else (24, 28, 20)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape)[(slice(None),) + (None,) * ndim] / 2
    mask = (((grid - centre) / (np.array(shape)[(slice(None),) + (None,) * ndim] / 3)) ** 2).sum(0) < 1
    image = np.where(mask, 0.3 + 0.5 * grid[0] / shape[0] + 0.05 * rng.random(shape), 0.0).astype(np.float32)
    return image, mask


@pytest.mark.parametrize("ndim", [2, 3])
def test_geometry_moves_inputs_target_and_mask_together(ndim: int) -> None:
    image, mask = _sample(ndim)
    settings = AugmentSettings(enabled=("flip", "affine"), probability=1.0)
    changed = 0
    for seed in range(6):
        (x,), (y,), m = augment_sample([image], [image.copy()], mask, np.random.default_rng(seed), settings)
        np.testing.assert_array_equal(x, y)  # the same transform on input and target
        assert m.dtype == bool and m.shape == mask.shape
        assert abs(int(m.sum()) - int(mask.sum())) < 0.3 * mask.sum()  # zoom <= 10 %
        changed += not np.array_equal(x, image)
        # the brain mask follows the image: nothing bright is left far outside it
        assert np.all(x[~m & (x > 0)] < 1.0)
    assert changed == 6  # an affine with probability 1 always changes the image


def test_intensity_changes_inputs_only_and_keeps_background_zero() -> None:
    image, mask = _sample()
    settings = AugmentSettings(enabled=("gamma", "noise"), probability=1.0)
    absent = np.zeros_like(image)
    (x, x_absent), (y,), m = augment_sample([image, absent], [image.copy()], mask, np.random.default_rng(1), settings)
    np.testing.assert_array_equal(y, image)
    np.testing.assert_array_equal(m, mask)
    assert not np.array_equal(x, image)
    assert np.all(x[~mask] == 0)  # the background stays exactly zero, as at inference
    assert not x_absent.any()  # an absent input stays absent


def test_same_generator_same_result_and_default_is_flip_only() -> None:
    image, mask = _sample()
    settings = AugmentSettings.parse("all")
    a = augment_sample([image], [image], mask, np.random.default_rng(7), settings)
    b = augment_sample([image], [image], mask, np.random.default_rng(7), settings)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    assert AugmentSettings().enabled == ("flip",)
    # flip-only draws one number per sample, so runs trained before the option existed replay identically
    rng = np.random.default_rng(0)
    augment_sample([image], [image], mask, rng, AugmentSettings())
    assert rng.random() == np.random.default_rng(0).random(2)[1]


def test_parse() -> None:
    assert AugmentSettings.parse("none").enabled == ()
    assert AugmentSettings.parse("all").enabled == AUGMENTATIONS
    assert AugmentSettings.parse("noise, flip").enabled == ("flip", "noise")
    assert AugmentSettings.parse("affine,gamma").to_spec() == "affine,gamma"
    with pytest.raises(InputError, match="unknown augmentation"):
        AugmentSettings.parse("flip,elastic")
