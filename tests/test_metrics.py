"""Tests of mrsynth_cli.metrics: cross-checks against scikit-image, FSIM/GMSD properties and hand cases,
the scoring normalisation, MIP orientation and the evaluation's input checks."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage import data as skdata
from skimage.filters import threshold_otsu
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

import mrsynth_cli.metrics  # noqa: F401  (registers the submodules)
from mrsynth_cli.errors import GeometryError, InputError
from mrsynth_cli.io.volume import Volume
from mrsynth_cli.metrics.evaluate import evaluate_files, evaluate_volumes
from mrsynth_cli.metrics.image import axial_crops, mae, nmse, psnr, ssim2d_axial, ssim3d, ssim_map
from mrsynth_cli.metrics.mip import axial_axis, maximum_intensity_projections
from mrsynth_cli.metrics.normalise import (
    SCORING_NORMALISATION,
    auto_brain_mask,
    default_brain_mask,
    otsu_threshold,
    robust_scale,
)

# The 2D functions live in submodules whose names equal the functions'.
fsim_mod = sys.modules["mrsynth_cli.metrics.fsim"]
gmsd_mod = sys.modules["mrsynth_cli.metrics.gmsd"]


def skimage_ssim_full(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    _, full = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    return full


@pytest.fixture(scope="module")
def pair3d() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth random volume, a noisy version of it, and an off-centre mask touching one border."""
    rng = np.random.default_rng(1)
    ref = ndimage.gaussian_filter(rng.random((26, 22, 18)), 1.0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    pred = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1)
    mask = np.zeros(ref.shape, bool)
    mask[0:15, 4:18, 3:14] = True
    return pred, ref, mask


@pytest.fixture(scope="module")
def camera() -> np.ndarray:
    return skdata.camera()[::2, ::2].astype(np.float64) / 255.0  # 256 × 256, in [0, 1]


# ---------------------------------------------------------------- PSNR / NMSE / MAE / SSIM


def test_psnr_nmse_mae_match_skimage(pair3d):
    pred, ref, mask = pair3d
    assert psnr(pred, ref) == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=1.0), abs=1e-10)
    assert nmse(pred, ref) == pytest.approx(normalized_root_mse(ref, pred, normalization="euclidean") ** 2, rel=1e-10)
    assert mae(pred, ref) == pytest.approx(float(np.mean(np.abs(pred - ref))), abs=1e-12)
    # With a mask: the same metrics over the mask voxels only.
    p, r = pred[mask], ref[mask]
    assert psnr(pred, ref, mask) == pytest.approx(peak_signal_noise_ratio(r, p, data_range=1.0), abs=1e-10)
    assert nmse(pred, ref, mask) == pytest.approx(normalized_root_mse(r, p, normalization="euclidean") ** 2, rel=1e-10)
    assert mae(pred, ref, mask) == pytest.approx(float(np.mean(np.abs(p - r))), abs=1e-12)


def test_psnr_identical_is_inf_and_values_are_python_floats(pair3d):
    _, ref, mask = pair3d
    assert psnr(ref, ref, mask) == math.inf
    for fn in (psnr, nmse, mae, ssim3d, ssim2d_axial):
        assert type(fn(ref * 0.9, ref, mask)) is float


def test_ssim_map_matches_skimage_3d_and_2d(pair3d):
    pred, ref, _ = pair3d
    np.testing.assert_allclose(ssim_map(pred, ref), skimage_ssim_full(pred, ref), atol=1e-10)
    np.testing.assert_allclose(
        ssim_map(pred[:, :, 5], ref[:, :, 5]), skimage_ssim_full(pred[:, :, 5], ref[:, :, 5]), atol=1e-10
    )
    # skimage's mean crops a 5-voxel border; on the cropped map our mean over a mask equals it.
    inner = np.zeros(ref.shape, bool)
    inner[5:-5, 5:-5, 5:-5] = True
    expected = structural_similarity(
        pred, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert ssim3d(pred, ref, inner) == pytest.approx(expected, abs=1e-10)


def test_ssim3d_is_mean_of_full_map_over_mask(pair3d):
    pred, ref, mask = pair3d
    full = skimage_ssim_full(pred, ref)
    assert ssim3d(pred, ref, mask) == pytest.approx(float(full[mask].mean()), abs=1e-10)
    assert ssim3d(pred, ref) == pytest.approx(float(full.mean()), abs=1e-10)
    # A small interior mask: the bounding-box shortcut must not change the result.
    small = np.zeros(ref.shape, bool)
    small[10:13, 9:12, 8:10] = True
    assert ssim3d(pred, ref, small) == pytest.approx(float(full[small].mean()), abs=1e-10)
    assert ssim3d(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("axis", [2, 0])
def test_ssim2d_axial_matches_skimage_per_slice(pair3d, axis):
    pred, ref, mask = pair3d
    scores = []
    for k in range(ref.shape[axis]):
        m = np.take(mask, k, axis=axis)
        if m.any():
            full = skimage_ssim_full(np.take(pred, k, axis=axis), np.take(ref, k, axis=axis))
            scores.append(full[m].mean())
    assert ssim2d_axial(pred, ref, mask, axis=axis) == pytest.approx(float(np.mean(scores)), abs=1e-10)


def test_metrics_refuse_shape_mismatch_and_empty_mask(pair3d):
    pred, ref, mask = pair3d
    with pytest.raises(ValueError):
        psnr(pred[:-1], ref)
    with pytest.raises(ValueError):
        mae(pred, ref, np.zeros(ref.shape, bool))


# ---------------------------------------------------------------- GMSD


def test_gmsd_identical_is_zero(camera):
    assert gmsd_mod.gmsd(camera, camera) == 0.0


def test_gmsd_hand_computed_tiny_case():
    # ref: a 2×2 bright block in a 4×4 image -> after 2×2 averaging and downsampling [[1, 0], [0, 0]].
    ref = np.zeros((4, 4))
    ref[:2, :2] = 1.0
    pred = 0.5 * ref
    # Prewitt/3 with zero padding on [[1, 0], [0, 0]] (worked by hand): gradient magnitudes
    # [[0, 1/3], [1/3, sqrt(2)/3]]; the prediction's are half of those.
    g = np.array([0.0, 1 / 3, 1 / 3, math.sqrt(2) / 3])
    c = 170.0 / 255.0**2
    gms = (2 * g * (g / 2) + c) / (g**2 + (g / 2) ** 2 + c)
    expected = math.sqrt(np.mean((gms - gms.mean()) ** 2))
    np.testing.assert_allclose(gmsd_mod.gradient_magnitude(gmsd_mod.downsample_2x2(ref)), g.reshape(2, 2), atol=1e-15)
    assert gmsd_mod.gmsd(pred, ref) == pytest.approx(expected, rel=1e-12)
    assert gmsd_mod.C == pytest.approx(170.0 / 65025.0)


def test_gmsd_downsample_pads_odd_sizes_with_zeros():
    np.testing.assert_allclose(gmsd_mod.downsample_2x2(np.ones((3, 3))), [[1.0, 0.5], [0.5, 0.25]])


def test_gmsd_symmetric_and_monotonic(camera):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(camera.shape)
    noisy = [np.clip(camera + s * noise, 0, 1) for s in (0.01, 0.03, 0.08, 0.2)]
    scores = [gmsd_mod.gmsd(x, camera) for x in noisy]
    assert np.all(np.diff(scores) > 0), scores
    blurred = [ndimage.gaussian_filter(camera, s) for s in (0.5, 1.0, 2.0, 4.0)]
    scores = [gmsd_mod.gmsd(x, camera) for x in blurred]
    assert np.all(np.diff(scores) > 0), scores
    assert gmsd_mod.gmsd(noisy[1], camera) == pytest.approx(gmsd_mod.gmsd(camera, noisy[1]), abs=1e-15)


def test_gmsd_same_on_0_255_scale_with_paper_constant(camera):
    # The paper's c = 170 on [0, 255] images equals c = 170/255² on [0, 1] images.
    other = ndimage.gaussian_filter(camera, 1.5)
    m_r = gmsd_mod.gradient_magnitude(gmsd_mod.downsample_2x2(camera * 255))
    m_d = gmsd_mod.gradient_magnitude(gmsd_mod.downsample_2x2(other * 255))
    gms = (2 * m_r * m_d + 170.0) / (m_r**2 + m_d**2 + 170.0)
    assert gmsd_mod.gmsd(other, camera) == pytest.approx(float(np.std(gms)), rel=1e-9)


# ---------------------------------------------------------------- FSIM


def test_fsim_identical_is_one(camera):
    assert fsim_mod.fsim(camera, camera) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(3)
    x = rng.random((40, 52))
    assert fsim_mod.fsim(x, x) == pytest.approx(1.0, abs=1e-12)
    for value in (0.0, 1.0):  # constant images: no phase congruency anywhere
        flat = np.full((32, 32), value)
        assert fsim_mod.fsim(flat, flat) == pytest.approx(1.0, abs=1e-12)


def test_fsim_symmetric_bounded_and_monotonic(camera):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(camera.shape)
    noisy = [np.clip(camera + s * noise, 0, 1) for s in (0.01, 0.03, 0.08, 0.2)]
    scores = list(fsim_mod.fsim_batch(np.stack(noisy), np.stack([camera] * 4)))
    assert np.all(np.diff(scores) < 0), scores
    assert all(0 < s < 1 for s in scores)
    blurred = [ndimage.gaussian_filter(camera, s) for s in (0.5, 1.0, 2.0, 4.0)]
    scores = list(fsim_mod.fsim_batch(np.stack(blurred), np.stack([camera] * 4)))
    assert np.all(np.diff(scores) < 0), scores
    assert fsim_mod.fsim(noisy[2], camera) == pytest.approx(fsim_mod.fsim(camera, noisy[2]), abs=1e-15)


def test_fsim_batch_equals_single(camera):
    other = ndimage.gaussian_filter(camera, 1.0)
    batch = fsim_mod.fsim_batch(np.stack([other, camera]), np.stack([camera, other]))
    assert batch[0] == pytest.approx(fsim_mod.fsim(other, camera), abs=1e-14)
    assert batch[1] == pytest.approx(batch[0], abs=1e-14)


def test_phase_congruency_features():
    # A thin line: all Fourier components in phase at the line -> PC close to 1 there, ~0 far away.
    line = np.zeros((64, 64))
    line[:, 32] = 1.0
    pc = fsim_mod.phase_congruency(line)
    assert pc.min() >= 0 and pc.max() <= 1
    assert pc[30, 32] > 0.95
    assert pc[30, 16] < 0.05
    # A step edge: PC peaks at the edge.
    step = np.zeros((64, 64))
    step[:, 32:] = 1.0
    row = fsim_mod.phase_congruency(step)[30]
    assert row[31] == row.max() or row[32] == row.max()


def _paper_phase_congruency(image: np.ndarray) -> np.ndarray:
    """A literal, loop-by-loop phase congruency (even-sized images) for cross-checking the vectorised one."""
    rows, cols = image.shape
    u, v = np.meshgrid(
        np.fft.ifftshift((np.arange(cols) - cols // 2) / cols), np.fft.ifftshift((np.arange(rows) - rows // 2) / rows)
    )
    omega = np.hypot(u, v)
    omega[0, 0] = 1.0
    theta = np.arctan2(-v, u)
    sigma_r = -math.log(0.55)
    sigma_theta = math.pi / 4 / 1.2
    butterworth = 1 / (1 + (omega / 0.45) ** 30)
    radial = []
    for s in range(4):
        g = np.exp(-(np.log(omega * 6 * 2**s) ** 2) / (2 * sigma_r**2)) * butterworth
        g[0, 0] = 0
        radial.append(g)
    spatial = [np.real(np.fft.ifft2(g)) * math.sqrt(rows * cols) for g in radial]
    sum_an2 = sum(float(np.sum(h**2)) for h in spatial)
    sum_aiaj = sum(float(np.sum(spatial[i] * spatial[j])) for i in range(4) for j in range(i + 1, 4))
    spectrum = np.fft.fft2(image)
    energy_all = np.zeros(image.shape)
    amplitude_all = np.zeros(image.shape)
    eps = 1e-4 / 255
    for o in range(4):
        theta_j = o * math.pi / 4
        d_theta = np.abs(np.angle(np.exp(1j * (theta - theta_j))))
        spread = np.exp(-(d_theta**2) / (2 * sigma_theta**2))
        eo = [np.fft.ifft2(spectrum * radial[s] * spread) for s in range(4)]
        sum_e = sum(r.real for r in eo)
        sum_o = sum(r.imag for r in eo)
        x_energy = np.sqrt(sum_e**2 + sum_o**2) + eps
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = sum(r.real * mean_e + r.imag * mean_o - np.abs(r.real * mean_o - r.imag * mean_e) for r in eo)
        em_n = float(np.sum((radial[0] * spread) ** 2))
        noise_power = -np.median(np.abs(eo[0]) ** 2) / math.log(0.5) / em_n
        tau = math.sqrt((2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj) / 2)
        threshold = (tau * math.sqrt(math.pi / 2) + 2.0 * math.sqrt((2 - math.pi / 2) * tau**2)) / 1.7
        energy_all += np.maximum(energy - threshold, 0)
        amplitude_all += sum(np.abs(r) for r in eo)
    return energy_all / amplitude_all


def test_phase_congruency_matches_literal_implementation(camera):
    patch = camera[60:124, 100:180]  # 64 × 80
    np.testing.assert_allclose(fsim_mod.phase_congruency(patch), _paper_phase_congruency(patch), atol=1e-10)


def test_fsim_downsampling_factor_and_constants():
    assert fsim_mod.downsample_factor((240, 240)) == 1
    assert fsim_mod.downsample_factor((383, 500)) == 1
    assert fsim_mod.downsample_factor((384, 500)) == 2
    assert fsim_mod.downsample_factor((512, 512)) == 2
    assert fsim_mod.T1 == 0.85
    assert fsim_mod.T2 == pytest.approx(160.0 / 255.0**2)
    # F×F mean anchored like MATLAB conv2(..., 'same'): for F = 2 each output averages a 2×2 block.
    x = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_allclose(fsim_mod.downsample(x, 2), [[2.5, 4.5], [10.5, 12.5]])


def test_fsim_gmsd_axial_use_slices_with_one_percent_of_mask(pair3d):
    pred, ref, _ = pair3d
    mask = np.zeros(ref.shape, bool)
    mask[5:20, 4:18, 2:12] = True
    mask[10, 10, 15] = True  # a slice with one mask voxel (< 1 %): not scored
    preds, refs = axial_crops(pred, ref, mask, axis=2)
    assert preds.shape == (10, 15, 14) and refs.shape == preds.shape
    np.testing.assert_array_equal(refs[0], ref[5:20, 4:18, 2])
    expected = np.mean([gmsd_mod.gmsd(pred[5:20, 4:18, k], ref[5:20, 4:18, k]) for k in range(2, 12)])
    assert gmsd_mod.gmsd_axial(pred, ref, mask) == pytest.approx(expected, abs=1e-14)
    expected = np.mean([fsim_mod.fsim(pred[5:20, 4:18, k], ref[5:20, 4:18, k]) for k in range(2, 12)])
    assert fsim_mod.fsim_axial(pred, ref, mask) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- normalisation and default mask


def test_robust_scale_uses_in_mask_percentiles_and_clips():
    rng = np.random.default_rng(5)
    data = rng.normal(100, 20, (20, 20, 20))
    mask = np.zeros(data.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    data[~mask] = 1e6  # outside the mask: must not move the percentiles
    lo, hi = np.percentile(data[mask], [0.5, 99.5])
    out = robust_scale(data, mask)
    np.testing.assert_allclose(out, np.clip((data - lo) / (hi - lo), 0, 1), atol=1e-12)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.mean(out[mask] == 0.0) == pytest.approx(0.005, abs=0.002)
    # Scaling and offsetting the intensities changes nothing.
    np.testing.assert_allclose(robust_scale(3 * data - 7, mask), out, atol=1e-9)
    # A constant volume does not divide by zero.
    np.testing.assert_array_equal(robust_scale(np.full(data.shape, 4.0), mask), np.zeros(data.shape))


def test_normalisation_description_is_quotable():
    assert "0.5th and 99.5th percentiles" in SCORING_NORMALISATION
    assert "Otsu" in SCORING_NORMALISATION and "\n" not in SCORING_NORMALISATION
    json.dumps(SCORING_NORMALISATION)


def test_default_mask_zero_background():
    rng = np.random.default_rng(0)
    data = np.zeros((30, 30, 30))
    data[8:22, 8:22, 8:22] = rng.uniform(10, 20, (14, 14, 14))
    data[10, 10, 10] = 0.0  # a zero voxel inside the brain stays outside the mask (reference > min)
    mask, how = auto_brain_mask(data)
    np.testing.assert_array_equal(mask, data > 0)
    assert "zero background" in how
    np.testing.assert_array_equal(default_brain_mask(data), mask)


def test_default_mask_otsu_fills_holes_and_keeps_largest_component():
    rng = np.random.default_rng(0)
    data = rng.uniform(0.5, 1.5, (40, 40, 40))  # noisy background: no exact-minimum voxels
    zz, yy, xx = np.mgrid[:40, :40, :40]
    ball = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2
    data[ball] += 10.0
    hole = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 3**2
    data[hole] = 1.0  # dark "ventricle" inside: filled
    data[2:4, 2:4, 2:4] = 12.0  # a bright speck outside: dropped
    mask, how = auto_brain_mask(data)
    np.testing.assert_array_equal(mask, ball)
    assert "Otsu" in how


def test_otsu_matches_skimage():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(40, 5, 3000)])
    assert otsu_threshold(values) == pytest.approx(float(threshold_otsu(values, nbins=256)), rel=1e-12)


# ---------------------------------------------------------------- MIP


def test_mip_reorients_lps_to_ras():
    data = np.zeros((6, 7, 8))
    data[1, 2, :] = 1.0  # a vessel along voxel axis 2 (= S)
    data[4, :, 6] = 2.0  # a vessel along voxel axis 1 (= P)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    mips = maximum_intensity_projections(data, lps)
    assert mips["axial"].shape == (6, 7) and mips["coronal"].shape == (6, 8) and mips["sagittal"].shape == (7, 8)
    # voxel (i, j, k) in LPS order is (5 - i, 6 - j, k) in RAS order.
    assert mips["axial"][5 - 1, 6 - 2] == 1.0
    assert mips["axial"][5 - 4].tolist() == [2.0] * 7
    np.testing.assert_array_equal(mips["coronal"][5 - 1], np.ones(8))
    np.testing.assert_array_equal(mips["coronal"][5 - 4], [0, 0, 0, 0, 0, 0, 2, 0])
    np.testing.assert_array_equal(mips["sagittal"][6 - 2], [1, 1, 1, 1, 1, 1, 2, 1])
    assert axial_axis(lps) == 2


def test_mip_axial_follows_superior_axis_when_axes_are_permuted():
    # Voxel axis 0 runs superior, axis 1 right, axis 2 anterior.
    affine = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    data = np.zeros((5, 6, 7))
    data[:, 2, 3] = 1.0  # a vessel along S
    assert axial_axis(affine) == 0
    mips = maximum_intensity_projections(data, affine)
    assert mips["axial"].shape == (6, 7)  # [R, A]
    assert mips["axial"][2, 3] == 1.0 and mips["axial"].sum() == 1.0
    np.testing.assert_array_equal(mips["sagittal"][3], np.ones(5))  # [A, S]


# ---------------------------------------------------------------- evaluate


def _volume(data: np.ndarray, affine: np.ndarray | None = None, name: str | None = None) -> Volume:
    return Volume(
        np.asarray(data, np.float32),
        np.eye(4) if affine is None else affine,
        nib.Nifti1Header(),
        Path(name) if name else None,
    )


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    zz, yy, xx = np.mgrid[:32, :36, :30]
    brain = ((zz - 16) / 13) ** 2 + ((yy - 18) / 15) ** 2 + ((xx - 15) / 12) ** 2 <= 1
    ref = np.where(brain, 100 + 30 * ndimage.gaussian_filter(rng.standard_normal(brain.shape), 2), 0.0)
    pred = np.where(brain, ref + 5 * rng.standard_normal(brain.shape), 0.0)
    return pred, ref


def test_evaluate_volumes_report(head):
    pred, ref = head
    result = evaluate_volumes(_volume(pred, name="pred.nii.gz"), _volume(ref, name="ref.nii.gz"))
    assert result["pred"] == "pred.nii.gz" and result["ref"] == "ref.nii.gz"
    assert result["mask"].startswith("auto (")
    assert result["normalisation"] == SCORING_NORMALISATION
    assert result["mask_voxels"] == int(np.count_nonzero(ref > 0)) and type(result["mask_voxels"]) is int
    assert set(result["metrics"]) == {"psnr", "ssim3d", "ssim2d_axial", "nmse", "mae", "fsim", "gmsd"}
    assert all(type(v) is float and math.isfinite(v) for v in result["metrics"].values())
    assert "mip" not in result
    json.dumps(result)
    # The normalisation makes the scores independent of each volume's intensity scale.
    rescaled = evaluate_volumes(_volume(pred * 7 + 3 * (pred > 0)), _volume(ref))
    for name, value in result["metrics"].items():
        assert rescaled["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_evaluate_identical_volumes_is_perfect(head):
    _, ref = head
    m = evaluate_volumes(_volume(ref), _volume(ref), tof=True)
    assert m["metrics"]["psnr"] == math.inf
    assert m["metrics"]["ssim3d"] == pytest.approx(1.0) and m["metrics"]["ssim2d_axial"] == pytest.approx(1.0)
    assert m["metrics"]["fsim"] == pytest.approx(1.0) and m["metrics"]["gmsd"] == 0.0
    assert m["metrics"]["nmse"] == 0.0 and m["metrics"]["mae"] == 0.0
    assert set(m["mip"]) == {"axial", "coronal", "sagittal"}
    for scores in m["mip"].values():
        assert scores["psnr"] == math.inf and scores["ssim"] == pytest.approx(1.0)


def test_evaluate_refuses_different_grids(head):
    pred, ref = head
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    with pytest.raises(GeometryError) as info:
        evaluate_volumes(_volume(pred, shifted, "pred.nii.gz"), _volume(ref, name="ref.nii.gz"))
    line = info.value.one_line()
    assert "pred.nii.gz" in line and "ref.nii.gz" in line and "\n" not in line
    with pytest.raises(GeometryError):
        evaluate_volumes(_volume(pred[:-1]), _volume(ref))


def test_evaluate_refuses_bad_masks(head):
    pred, ref = head
    with pytest.raises(GeometryError) as info:
        evaluate_volumes(_volume(pred), _volume(ref), mask=_volume(np.ones((4, 4, 4)), name="mask.nii.gz"))
    assert "mask.nii.gz" in info.value.one_line()
    with pytest.raises(InputError) as info:
        evaluate_volumes(_volume(pred), _volume(ref), mask=_volume(np.zeros(ref.shape), name="mask.nii.gz"))
    assert "mask.nii.gz" in info.value.one_line() and "empty" in info.value.one_line()


def test_evaluate_files_with_mask_and_tof_from_name(tmp_path, head):
    pred, ref = head
    affine = np.diag([-0.8, -0.8, 0.8, 1.0])
    for name, data in [("sub-01_angio.nii.gz", ref), ("synth_angio.nii.gz", pred), ("sub-01_T2w.nii.gz", ref)]:
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(tmp_path / name))
    mask = np.zeros(ref.shape, np.uint8)
    mask[8:24, 8:28, 6:24] = 1
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "mask.nii.gz"))
    result = evaluate_files(tmp_path / "synth_angio.nii.gz", tmp_path / "sub-01_angio.nii.gz", tmp_path / "mask.nii.gz")
    assert "mip" in result and result["mask"] == str(tmp_path / "mask.nii.gz")
    assert result["mask_voxels"] == int(mask.sum())
    assert all(type(v) is float for scores in result["mip"].values() for v in scores.values())
    assert "mip" not in evaluate_files(tmp_path / "synth_angio.nii.gz", tmp_path / "sub-01_T2w.nii.gz")
    assert "mip" not in evaluate_files(tmp_path / "synth_angio.nii.gz", tmp_path / "sub-01_angio.nii.gz", tof=False)
