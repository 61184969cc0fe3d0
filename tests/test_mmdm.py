"""MMDM: bridge marginals, the Gumbel MIP, NAWS gradients, overlap averaging and the CLI end to end on phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mmdm.config import MMDMConfig, load_preset
from mrsynth_cli.families.mmdm.inference import build_sampler, synthesize_windows
from mrsynth_cli.families.mmdm.losses import (
    NoiseAdaptiveWeighting,
    cumulative_mip,
    gumbel_cumulative_mip,
    gumbel_noise,
    mip_loss,
)
from mrsynth_cli.families.mmdm.network import MMDMModel
from mrsynth_cli.families.mmdm.train import make_loss
from mrsynth_cli.families.mmdm.windows import extract_windows, sliding_window_average, window_starts
from mrsynth_cli.sampling.bridge import BridgeSchedule


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tensors are tiny, and on a shared 2-core machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**changes) -> MMDMConfig:
    values = dict(
        model_shape=(16, 16, 8),
        slices=3,
        window_stride=2,
        batch_size=2,
        channels=(8, 16),
        blocks=(1, 1),
        heads=(1, 2),
        time_channels=16,
        fusion_channels=(8,),
        fusion_blocks=(1,),
        num_train_timesteps=100,
        sampling_steps=3,
        validation_steps=2,
        validation_windows=1,
    )
    return MMDMConfig(**{**values, **changes})


# ---------------------------------------------------------------------------------------------------
# Eq. 1: the bridge marginals
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 250, 500, 999])
def test_bridge_marginals_match_eq1(t: int) -> None:
    schedule = BridgeSchedule(1000)
    x0, y = torch.tensor([-0.8, 0.3]), torch.tensor([0.5, -1.0])
    n = 200_000
    noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(t))
    samples = schedule.q_sample(x0.expand(n, 2), y.expand(n, 2), torch.full((n,), t), noise)
    m = float(schedule.m_t[t])
    delta = 2 * (m - m * m)
    assert abs(m - (0.001 + 0.998 * t / 999)) < 1e-9  # m_t is linear in t (within 0.001 of t/T)
    torch.testing.assert_close(samples.mean(0), (1 - m) * x0 + m * y, atol=5 * (delta / n) ** 0.5 + 1e-6, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full((2,), delta), atol=0.01 * delta + 1e-6, rtol=0)


def test_reverse_step_uses_gaussian_noise_from_the_generator() -> None:
    config = tiny_config()
    sampler = build_sampler(config, None, 4)
    y = torch.zeros(4000, 1)
    sampler.start(y)
    x_t = torch.zeros_like(y)
    out = sampler.step(torch.zeros_like(y), 0, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    again = sampler.step(torch.zeros_like(y), 0, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(out, again)
    assert (out < 0).float().mean().item() == pytest.approx(0.5, abs=0.05)  # centred: not rand_like's [0, 1)
    standardised = (out - out.mean()) / out.std()
    assert (standardised.abs() > 2).float().mean().item() == pytest.approx(0.0455, abs=0.015)  # Gaussian tails


# ---------------------------------------------------------------------------------------------------
# Eqs. 5-7: the MIP loss
# ---------------------------------------------------------------------------------------------------


def test_cumulative_mip_is_the_running_maximum() -> None:
    x = torch.tensor([[0.1, 0.5, 0.2, 0.7, 0.3]])[..., None, None]
    np.testing.assert_allclose(cumulative_mip(x).flatten().numpy(), [0.1, 0.5, 0.5, 0.7, 0.7])


def test_gumbel_mip_tends_to_the_hard_max_as_tau_goes_to_zero() -> None:
    # Distinct values 1/160 apart, so that a small enough tau separates every pair.
    x = (torch.randperm(160, generator=torch.Generator().manual_seed(1)).float() / 80 - 1).reshape(2, 5, 4, 4)
    hard = cumulative_mip(x)
    errors = [
        (gumbel_cumulative_mip(x, tau, None, gumbel_scale=0.0) - hard).abs().max().item() for tau in (1.0, 0.1, 1e-4)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    # With the Gumbel noise of eq. 6 the limit is the hard max of the perturbed values (a Gumbel-max draw).
    tau = 1e-4
    soft = gumbel_cumulative_mip(x, tau, torch.Generator().manual_seed(7))
    perturbed = x + gumbel_noise(x.shape, torch.Generator().manual_seed(7), x.device)
    index = torch.cummax(perturbed, dim=1).indices
    torch.testing.assert_close(soft, torch.gather(x, 1, index), atol=1e-4, rtol=0)
    assert not torch.equal(torch.gather(x, 1, index), hard)  # the noise does change picks at this scale


def test_mip_loss_is_zero_at_the_target_without_noise_and_has_gradients() -> None:
    target = torch.rand((2, 5, 4, 4), generator=torch.Generator().manual_seed(2))
    assert mip_loss(target, target, 1e-4, None, gumbel_scale=0.0).abs().max().item() < 1e-8
    pred = target.clone().requires_grad_(True)
    loss = mip_loss(pred, target + 0.1, 0.75, torch.Generator().manual_seed(0)).sum()
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Eqs. 8-11: noise-adaptive weighting
# ---------------------------------------------------------------------------------------------------


def test_noise_adaptive_weighting_matches_eq11_with_each_samples_delta() -> None:
    weighting = NoiseAdaptiveWeighting(paths=3, fused=True)
    with torch.no_grad():
        weighting.sigma_paths.copy_(torch.tensor([0.5, 1.0, 2.0]))
        weighting.sigma_fused.fill_(0.8)
    path_losses = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 4.0]])
    fused = torch.tensor([0.7, 0.2])
    delta = torch.tensor([0.1, 0.45])
    expected = []
    for b in range(2):
        v = weighting.sigma_paths.detach() ** 2 + delta[b]
        v0 = 0.64 + 1e-6
        expected.append((path_losses[b] / (2 * v)).sum() + torch.log1p(v).sum() + fused[b] / (2 * v0) + np.log1p(v0))
    total = weighting(fused, path_losses, delta)
    torch.testing.assert_close(total, torch.stack(expected).mean())
    first_only = weighting(fused, path_losses, delta[:1].expand(2))
    assert abs(total.item() - first_only.item()) > 1e-3  # the second sample's own delta_t matters
    total.backward()
    assert weighting.sigma_paths.grad.abs().min() > 0 and weighting.sigma_fused.grad.abs() > 0
    plain = NoiseAdaptiveWeighting(paths=3, fused=True)(fused, path_losses, delta, adaptive=False)
    torch.testing.assert_close(plain, (path_losses.sum(1) + fused).mean())


def test_training_loss_passes_every_samples_delta_and_trains_the_sigmas(monkeypatch) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    model = MMDMModel(config)
    seen = {}
    original = model.weighting.forward

    def spy(fused, path_losses, delta, adaptive=True):
        seen["delta"] = delta
        return original(fused, path_losses, delta, adaptive=adaptive)

    monkeypatch.setattr(model.weighting, "forward", spy)
    batch = {c: torch.rand(4, 3, 16, 16) * 2 - 1 for c in ("TOF", "T1", "T2", "FLAIR")}
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(0, config.num_train_timesteps, (4,), generator=torch.Generator().manual_seed(3))
    loss = make_loss(config)(model, batch, generator)
    loss.backward()
    expected = BridgeSchedule(config.num_train_timesteps).variance_t[t].float()
    torch.testing.assert_close(seen["delta"], expected)  # one delta_t per sample, from its own t
    assert len(set(t.tolist())) > 1
    assert model.weighting.sigma_paths.grad.abs().min() > 0 and model.weighting.sigma_fused.grad.abs() > 0
    assert all(p.grad is not None for p in model.fusion.parameters())


# ---------------------------------------------------------------------------------------------------
# Network, fusion, 2.5D windows
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,inputs", [("mmdm", ("T1", "T2", "FLAIR")), ("bbdm", ("T1",)), ("concat", ("T1", "T2", "FLAIR"))]
)
def test_variants_predict_windows_and_untrained_fusion_is_the_mean(variant: str, inputs: tuple[str, ...]) -> None:
    config = tiny_config(variant=variant, inputs=inputs)
    model = MMDMModel(config).eval()
    sources = {c: torch.rand(2, 3, 16, 16) * 2 - 1 for c in config.input_contrasts}
    states = {c: torch.rand(2, 3, 16, 16) for c in config.path_contrasts}
    with torch.no_grad():
        fused, independent = model(states, torch.tensor([5, 50]), sources)
    assert fused.shape == (2, 3, 16, 16) and set(independent) == set(config.path_contrasts)
    torch.testing.assert_close(fused, torch.stack(list(independent.values())).mean(0))
    sampler = build_sampler(config, "bridge", 3)
    out = synthesize_windows(model, config, sources, sampler, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1.0


def test_config_rejects_bad_values_and_presets_load() -> None:
    with pytest.raises(InputError, match="bbdm"):
        tiny_config(variant="bbdm")
    with pytest.raises(InputError, match="window_stride"):
        tiny_config(window_stride=4)
    with pytest.raises(InputError, match="unknown keys"):
        MMDMConfig.from_dict({"colour": 1})
    for name in ("cpu", "paper"):
        preset = load_preset(name)
        config = MMDMConfig(**preset.model)
        assert MMDMConfig.from_dict(config.to_dict()) == config
    assert load_preset("paper").model["sampling_steps"] == 200


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_sliding_window_reconstructs_a_volume_exactly_for_an_identity_model(stride: int) -> None:
    volume = np.random.default_rng(stride).random((6, 7, 11)).astype(np.float32)
    starts = window_starts(11, 3, stride)
    assert starts[0] == 0 and starts[-1] == 8 and all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    calls = []

    def identity(chunk: list[int]) -> np.ndarray:
        calls.append(len(chunk))
        return extract_windows(volume, chunk, 3)

    out = sliding_window_average(identity, volume.shape, starts, 3, batch_size=2)
    np.testing.assert_array_equal(out, volume)
    assert max(calls) <= 2


def test_sliding_window_averages_overlaps() -> None:
    starts = window_starts(5, 3, 1)  # 0, 1, 2: slice 2 is in all three windows
    out = sliding_window_average(
        lambda c: np.stack([np.full((3, 1, 1), s, np.float32) for s in c]), (1, 1, 5), starts, 3
    )
    np.testing.assert_allclose(out[0, 0], [0, 0.5, 1, 1.5, 2])


# ---------------------------------------------------------------------------------------------------
# End to end through the CLI on phantom subjects
# ---------------------------------------------------------------------------------------------------

runner = CliRunner()
TINY_TOML = """
[model]
spacing_mm = 4.0
model_shape = [40, 48, 40]
slices = 3
window_stride = 2
batch_size = 2
channels = [8, 16]
blocks = [1, 1]
heads = [1, 2]
time_channels = 16
fusion_channels = [8]
fusion_blocks = [1]
num_train_timesteps = 100
sampling_steps = 2
validation_steps = 2
validation_windows = 1

[training]
learning_rate = 1e-3
weight_decay = 0.0
ema_decay = 0.9
warmup_steps = 1
"""


def invoke(*args: str, env: dict[str, str]):
    return runner.invoke(app, expand_multi_value_options(list(args)), env={"MRSYNTH_DEBUG": "0", **env})


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict:
    from mrsynth_cli.phantom import simulate_dataset

    root = tmp_path_factory.mktemp("mmdm")
    simulate_dataset(root / "data", n_subjects=2, seed=3, resolution_mm=4.0, skull=False)
    # Skull-strip with the phantom's own ground-truth brain mask, so preprocessing detects a stripped brain
    # instead of registering a template (tens of seconds per subject on a shared CPU).
    for subject in ("sub-01", "sub-02"):
        mask = (
            nib.load(
                str(root / "data" / "derivatives" / "phantom" / subject / "anat" / f"{subject}_desc-brain_mask.nii.gz")
            ).get_fdata()
            > 0
        )
        for path in (root / "data" / subject / "anat").glob("*.nii.gz"):
            image = nib.load(str(path))
            nib.save(
                nib.Nifti1Image(np.where(mask, image.get_fdata(), 0).astype(np.float32), image.affine, image.header),
                str(path),
            )
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    env = {"MRSYNTH_HOME": str(root / "home")}
    common = [
        "train",
        "mmdm",
        "--data",
        str(root / "data"),
        "--out",
        str(root / "run"),
        "--config",
        str(config),
        "--device",
        "cpu",
        "--checkpoint-every",
        "2",
        "--validation-subject",
        "sub-02",
        "--validate-every",
        "4",
    ]
    first = invoke(*common, "--max-steps", "2", env=env)
    assert first.exit_code == 0, first.output
    again = invoke(*common, "--max-steps", "2", env=env)
    resumed = invoke(*common, "--max-steps", "4", "--resume", env=env)
    assert resumed.exit_code == 0, resumed.output
    return {"root": root, "env": env, "again": again}


def test_training_resumes_and_checkpoints_the_config(flow) -> None:
    assert flow["again"].exit_code == 2 and "--resume" in flow["again"].output
    meta = json.loads((flow["root"] / "run" / "checkpoint" / "config.json").read_text())
    assert meta["family"] == "mmdm" and meta["step"] == 4
    assert meta["config"]["inputs"] == ["T1", "T2", "FLAIR"] and meta["config"]["target"] == "TOF"
    log = [json.loads(line) for line in (flow["root"] / "run" / "train_log.jsonl").read_text().splitlines()]
    validations = [r for r in log if "validation" in r]
    assert [r["step"] for r in validations] == [2, 4]
    assert {"psnr", "mip_psnr", "mip_ssim"} <= set(validations[-1]["validation"])


def test_import_synthesize_writes_tof_on_the_input_grid_and_three_mips(flow, tmp_path: Path) -> None:
    env = flow["env"]
    imported = invoke("weights", "import", str(flow["root"] / "run" / "checkpoint"), "--name", "tiny-mmdm", env=env)
    assert imported.exit_code == 0, imported.output
    anat = flow["root"] / "data" / "sub-02" / "anat"
    out, mips = tmp_path / "tof.nii.gz", tmp_path / "mips"
    args = [
        "synthesize",
        "--in",
        f"t1={anat / 'sub-02_T1w.nii.gz'}",
        f"t2={anat / 'sub-02_T2w.nii.gz'}",
        f"flair={anat / 'sub-02_FLAIR.nii.gz'}",
        "--target",
        "tof",
        "--out",
        str(out),
        "--steps",
        "2",
        "--device",
        "cpu",
        "--mip-dir",
        str(mips),
        "--registration",
        "none",
    ]
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.output
    source = nib.load(str(anat / "sub-02_T1w.nii.gz"))
    image = nib.load(str(out))
    assert image.shape == source.shape
    np.testing.assert_array_equal(image.affine, source.affine)
    assert np.isfinite(image.get_fdata()).all() and image.get_fdata().max() > 0
    sidecar = json.loads((tmp_path / "tof.json").read_text())
    assert sidecar["Model"]["Family"] == "mmdm" and sidecar["Steps"] == 2
    volume = image.get_fdata()
    for view, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        png = Image.open(mips / f"tof_mip-{view}.png")
        mip = nib.load(str(mips / f"tof_mip-{view}.nii.gz"))
        assert png.mode == "L" and np.asarray(png).max() > 0
        assert mip.shape[axis] == 1  # the phantom is stored RAS, so the canonical axes are the file's
        np.testing.assert_allclose(mip.get_fdata().squeeze(axis), volume.max(axis=axis), rtol=1e-6)
        assert png.size == tuple(s for i, s in enumerate(volume.shape) if i != axis)
    other = tmp_path / "again" / "tof.nii.gz"  # same stem, so the same MIP names
    refused = invoke(*args, "--out", str(other), env=env)
    assert refused.exit_code != 0 and "exists" in refused.output  # MIP files are never overwritten silently
    assert not other.exists()
    scored = invoke("evaluate", "--pred", str(out), "--ref", str(anat / "sub-02_angio.nii.gz"), "--json", env=env)
    assert scored.exit_code == 0, scored.output
    assert set(json.loads(scored.output)["mip"]["axial"]) == {"psnr", "ssim", "rmse"}
