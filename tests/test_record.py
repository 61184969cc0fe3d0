"""The preprocessing record: each geometry step and the whole chain invert exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mrsynth_cli.errors import InputError
from mrsynth_cli.preprocessing.record import CropPad, IntensityScale, PreprocessRecord, Reorient, Resample
from tests.conftest import AFFINES


def _record(affine_name: str, shape=(20, 24, 18), target=(16, 16, 16), spacing=None) -> tuple[PreprocessRecord, np.ndarray]:
    affine = AFFINES[affine_name]
    rng = np.random.default_rng(0)
    data = rng.random(shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[4:15, 5:20, 3:14] = True
    reorient = Reorient.to_canonical(affine, shape)
    steps = [reorient]
    canonical_shape = reorient.forward(data).shape
    if spacing is not None:
        steps.append(Resample.to_spacing(canonical_shape, (1.0, 1.0, 1.0), spacing))
        canonical_shape = tuple(steps[-1].shape_after)
    mask_model = mask
    for step in steps:
        mask_model = step.forward(mask_model.astype(np.float32), order=0) > 0.5
    steps.append(CropPad.around_mask(mask_model, target))
    record = PreprocessRecord("ref.nii.gz", list(shape), affine.tolist(), steps)
    return record, data


def test_reorient_and_croppad_round_trip_inside_the_box(affine_name: str) -> None:
    record, data = _record(affine_name, target=(32, 32, 32))  # box larger than the volume: pure padding
    model = record.to_model_space(data)
    assert model.shape == (32, 32, 32)
    np.testing.assert_array_equal(record.to_native(model), data)


def test_model_affine_maps_model_voxels_to_the_same_world_points(affine_name: str) -> None:
    record, data = _record(affine_name)
    native_affine = np.asarray(record.reference_affine)
    model = record.to_model_space(data)
    model_affine = record.model_affine()
    # a voxel present in both grids must sit at the same world point with the same value
    index = np.array(np.unravel_index(np.argmax(model), model.shape))
    world = model_affine @ np.r_[index, 1]
    native_index = np.rint(np.linalg.solve(native_affine, world)[:3]).astype(int)
    assert data[tuple(native_index)] == model[tuple(index)]
    assert nib.aff2axcodes(model_affine) == ("R", "A", "S")


def test_crop_loses_only_outside_the_box() -> None:
    record, data = _record("ras", target=(8, 8, 8))
    back = record.to_native(record.to_model_space(data))
    inside = back != 0
    np.testing.assert_array_equal(back[inside], data[inside])
    assert inside.sum() == 8**3


def test_resample_grid_round_trip_is_exact_in_shape_and_close_in_value() -> None:
    record, _ = _record("lps", shape=(40, 40, 30), target=(24, 24, 24), spacing=(2.0, 2.0, 2.0))
    x, y, z = np.meshgrid(*[np.linspace(0, 1, n) for n in (40, 40, 30)], indexing="ij")
    smooth = (np.sin(3 * x) + np.cos(2 * y) + z).astype(np.float32)
    back = record.to_native(record.to_model_space(smooth))
    assert back.shape == smooth.shape
    kept = record.to_native(record.to_model_space(np.ones_like(smooth), order=0), order=0) > 0
    kept = ndimage.binary_erosion(kept, iterations=3)  # away from the crop and field-of-view edges
    assert kept.sum() > 1000
    assert np.abs(back - smooth)[kept].max() < 0.05


def test_json_round_trip(tmp_path) -> None:
    record, data = _record("oblique", spacing=(1.5, 1.5, 1.5))
    record.intensity["T1"] = IntensityScale.from_percentiles(data, data > 0.2)
    record.backends["registration"] = "sitk"
    record.save(tmp_path / "record.json")
    loaded = PreprocessRecord.load(tmp_path / "record.json")
    assert loaded.to_dict() == record.to_dict()
    np.testing.assert_array_equal(loaded.to_native(loaded.to_model_space(data)), record.to_native(record.to_model_space(data)))


def test_intensity_scale_inverts() -> None:
    values = np.linspace(-5, 100, 1000).astype(np.float32)
    scale = IntensityScale.from_percentiles(values, np.ones_like(values), clip=False)
    np.testing.assert_allclose(scale.inverse(scale.forward(values)), values, rtol=1e-5, atol=1e-4)
    assert IntensityScale.from_percentiles(values, np.ones_like(values)).forward(values).max() == 1.0


def test_errors() -> None:
    with pytest.raises(InputError, match="brain mask is empty"):
        CropPad.around_mask(np.zeros((4, 4, 4), bool))
    with pytest.raises(InputError, match="schema_version"):
        PreprocessRecord.from_dict({"schema_version": 99})
