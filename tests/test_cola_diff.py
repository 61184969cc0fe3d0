"""CoLa-Diff: module shapes, the wavelet / auto-weight / KL maths against hand-computed values, and the
whole CLI flow (train autoencoder, train cola-diff, resume, import, synthesize) on tiny subjects."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pywt
import torch
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.errors import InputError
from mrsynth_cli.families.cola_diff.auto_weight import AutoWeight
from mrsynth_cli.families.cola_diff.blocks import (
    AFF,
    BottleneckResBlock,
    LargeKernelFusion,
    PlainResBlock,
    TransformerBlock,
    timestep_embedding,
)
from mrsynth_cli.families.cola_diff.config import ABLATIONS, AutoencoderConfig, CoLaDiffConfig, load_preset
from mrsynth_cli.families.cola_diff.filtering import (
    BlockMatchingShrinkage,
    SimilarCooperativeFilter,
    dct_matrix,
    soft_threshold,
)
from mrsynth_cli.families.cola_diff.losses import diffusion_loss, normal_kl
from mrsynth_cli.families.cola_diff.network import CoLaDiffModel, LatentEpsNet
from mrsynth_cli.families.cola_diff.wavelets import DWT2D
from mrsynth_cli.sampling import NoiseSchedule
from tests.conftest import write_nifti
from tests.engine_fixtures import head


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tensors are tiny, and on a shared 2-core machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_AE = AutoencoderConfig(channels=(8, 16, 16), norm_num_groups=8, contrasts=("T1", "T2", "FLAIR"), spacing_mm=6.0,
                            model_shape=(24, 24, 20), batch_size=4)


def tiny_config(**changes) -> CoLaDiffConfig:
    base = CoLaDiffConfig(target="FLAIR", inputs=("T1", "T2"), autoencoder=TINY_AE, spacing_mm=6.0,
                          model_shape=(24, 24, 20), batch_size=2, channels=(16, 32), attention_downsample=(2,), heads=2,
                          context_channels=16, group_size=4, block_size=2, block_stride=1, wavelet="db2",
                          wavelet_levels=2)
    return replace(base, **changes)


# ---------------------------------------------------------------------------------------------------
# Wavelets
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym3"])
def test_dwt_matches_pywavelets_periodization(wavelet: str) -> None:
    x = torch.randn(1, 1, 8, 12, dtype=torch.float64)
    bands = DWT2D(wavelet, 1)(x)
    c_a, (c_h, c_v, c_d) = pywt.dwt2(x[0, 0].numpy(), wavelet, mode="periodization")
    ours = [bands.approx, *bands.details[0]]
    for mine, theirs in zip(ours, [c_a, c_h, c_v, c_d], strict=True):
        np.testing.assert_allclose(mine[0, 0].numpy(), theirs, atol=1e-12)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4", "coif1"])
@pytest.mark.parametrize("shape", [(16, 20), (7, 9), (5, 6)])
def test_dwt_multilevel_inverts_exactly(wavelet: str, shape: tuple[int, int]) -> None:
    dwt = DWT2D(wavelet, levels=3)
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    bands = dwt(x)
    assert bands.approx.shape[:2] == (2, 3) and len(bands.details) == 3
    assert bands.details[0][0].shape[-2:] == ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    torch.testing.assert_close(dwt.inverse(bands), x, atol=1e-12, rtol=0)
    images = dwt.band_images(bands)  # f = A + H + V + D on the input grid
    assert all(v.shape == x.shape for v in images.values())
    torch.testing.assert_close(sum(images.values()), x, atol=1e-12, rtol=0)
    x32 = x.float()
    torch.testing.assert_close(dwt.inverse(dwt(x32)), x32, atol=2e-6, rtol=0)


def test_non_orthogonal_wavelet_is_refused() -> None:
    with pytest.raises(InputError, match="not orthogonal"):
        DWT2D("bior2.2")


# ---------------------------------------------------------------------------------------------------
# Similar cooperative filtering
# ---------------------------------------------------------------------------------------------------


def test_dct_matrix_is_orthonormal_and_soft_threshold() -> None:
    m = dct_matrix(6, torch.float64)
    torch.testing.assert_close(m @ m.T, torch.eye(6, dtype=torch.float64))
    out = soft_threshold(torch.tensor([-3.0, -0.5, 0.2, 2.0]), torch.tensor(1.0))
    torch.testing.assert_close(out, torch.tensor([-2.0, 0.0, 0.0, 1.0]))


def test_filter_keeps_shape_is_identity_at_zero_threshold_and_differentiable() -> None:
    torch.manual_seed(0)
    scf = SimilarCooperativeFilter(4, "db2", levels=2, block_size=3, block_stride=1, group_size=4).double()
    x = torch.randn(2, 4, 11, 14, dtype=torch.float64, requires_grad=True)
    y = scf(x)
    assert y.shape == x.shape
    assert (y - x).abs().max() > 1e-3  # the initial thresholds do shrink
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for part in (scf.delta_approx, scf.delta_diagonal, scf.gamma_horizontal, scf.gamma_vertical):
        assert part.raw.grad is not None and torch.isfinite(part.raw.grad).all()
    assert scf.delta_diagonal.raw.grad.abs().sum() > 0 and scf.gamma_vertical.raw.grad.abs().sum() > 0
    with torch.no_grad():
        for part in (scf.delta_approx, scf.delta_diagonal, scf.gamma_horizontal, scf.gamma_vertical):
            part.raw.fill_(-60.0)  # softplus -> 0: no shrinkage
        torch.testing.assert_close(scf(x), x, atol=1e-10, rtol=0)


def test_block_matching_groups_identical_blocks_and_gradcheck() -> None:
    # A map made of one repeated 2x2 tile plus noise: with a large threshold every group collapses to
    # its mean, i.e. the noise of matched blocks is averaged away.
    tile = torch.tensor([[1.0, -1.0], [2.0, 0.5]], dtype=torch.float64)
    clean = tile.repeat(4, 4)[None, None]
    noisy = clean + 0.05 * torch.randn(1, 1, 8, 8, dtype=torch.float64)
    bm = BlockMatchingShrinkage(1, block_size=2, block_stride=2, group_size=8).double()
    with torch.no_grad():
        bm.raw.fill_(10.0)
    out = bm(noisy, torch.ones(1, 1, dtype=torch.float64))
    assert (out - clean).pow(2).mean() < 0.5 * (noisy - clean).pow(2).mean()
    small = BlockMatchingShrinkage(2, block_size=2, block_stride=1, group_size=3).double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: small(v, torch.full((1, 2), 0.3, dtype=torch.float64)), (x,))


# ---------------------------------------------------------------------------------------------------
# Auto-weight adaptation (eqs. 7-10), hand-computed
# ---------------------------------------------------------------------------------------------------


def test_auto_weight_matches_hand_computation() -> None:
    aw = AutoWeight(2, epsilon=1e-5).double()
    with torch.no_grad():
        aw.mu.copy_(torch.tensor([2.0, 0.5]))
        aw.nu.copy_(torch.tensor([0.5, -1.0]))
        aw.o.copy_(torch.tensor([0.1, 0.0]))
    y = torch.tensor([[[[1.0, 2.0]], [[0.0, 3.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    # By hand: G_1 = 2 sqrt(1 + 4 + 1e-5) = 4.4721404, G_2 = 0.5 sqrt(9 + 1e-5) = 1.5000008;
    # G^_c = sqrt(2) G_c / sqrt(G_1^2 + G_2^2 + 1e-5) = 1.3408028, 0.4497187;
    # gates 1 + sigmoid(0.5 * 1.3408028 + 0.1) = 1.6836077 and 1 + sigmoid(-1.0 * 0.4497187) = 1.3894276.
    g = aw.embedding(y)
    torch.testing.assert_close(g, torch.tensor([[4.472140427133298, 1.5000008333331019]], dtype=torch.float64))
    torch.testing.assert_close(aw.normalised(g), torch.tensor([[1.3408028052652845, 0.44971873267461265]],
                                                                dtype=torch.float64))
    expected = torch.tensor([[[[1.683607718789348, 3.367215437578696]], [[0.0, 4.168282925874609]]]],
                            dtype=torch.float64)
    torch.testing.assert_close(aw(y), expected)
    # The normalisation keeps sum_c G^_c^2 = S (up to varpi).
    assert abs(float(aw.normalised(g).detach().pow(2).sum()) - 2.0) < 1e-5


# ---------------------------------------------------------------------------------------------------
# The loss: learned-range variance and the KL term, hand-computed
# ---------------------------------------------------------------------------------------------------


def test_kl_term_matches_hand_computation() -> None:
    schedule = NoiseSchedule(num_train_timesteps=4, beta_start=0.1, beta_end=0.4)  # betas .1 .2 .3 .4
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    noise = torch.full_like(x0, 0.5)
    t = torch.tensor([2])
    x_t = schedule.q_sample(x0, t, noise)  # sqrt(.504) + sqrt(.496) * .5 = 1.0620659
    torch.testing.assert_close(x_t, torch.full_like(x0, 1.062065911205134))
    output = torch.tensor([[[[0.3]], [[0.2]]]], dtype=torch.float64)  # eps 0.3, v 0.2
    loss, terms = diffusion_loss(schedule, output, x0, x_t, noise, t)
    # By hand: beta~_2 = .3 (1 - .72) / (1 - .504) = 0.1693548; posterior mean 1.0148450; the model's mean at
    # x0 = (x_t - sqrt(.496) .3) / sqrt(.504) is 1.1166716; log Sigma = .6 log .3 + .4 log beta~ = -1.4326873;
    # KL = .5 (-1 + lv2 - lv1 + exp(lv1 - lv2) + dm^2 exp(-lv2)) / ln 2 = 0.0693238 bits.
    beta_tilde = 0.3 * 0.28 / 0.496
    lv1, lv2 = math.log(beta_tilde), 0.6 * math.log(0.3) + 0.4 * math.log(beta_tilde)
    dm = 1.014844974582879 - 1.1166716095781983
    kl = 0.5 * (-1 + lv2 - lv1 + math.exp(lv1 - lv2) + dm**2 * math.exp(-lv2)) / math.log(2)
    assert abs(kl - 0.06932378912805642) < 1e-12
    assert abs(float(terms["kl"]) - kl) < 1e-10 and abs(float(terms["eps"]) - 0.04) < 1e-12
    assert abs(float(loss) - (0.04 + kl)) < 1e-10
    # t = 0 has no KL term (eq. 6 sums KL terms only); without a learned variance only L_eps is left.
    _, at_zero = diffusion_loss(schedule, output, x0, schedule.q_sample(x0, torch.tensor([0]), noise), noise,
                                torch.tensor([0]))
    assert float(at_zero["kl"]) == 0.0
    plain, plain_terms = diffusion_loss(schedule, output[:, :1], x0, x_t, noise, t, learned_variance=False)
    assert abs(float(plain) - 0.04) < 1e-12 and "kl" not in plain_terms
    assert float(normal_kl(x0, x0.log1p(), x0, x0.log1p())) == 0.0


def test_kl_trains_only_the_variance_head() -> None:
    schedule = NoiseSchedule(num_train_timesteps=10)
    x0, noise = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    t = torch.tensor([3, 7])
    x_t = schedule.q_sample(x0, t, noise)
    output = torch.randn(2, 4, 3, 3, requires_grad=True)
    total, terms = diffusion_loss(schedule, output, x0, x_t, noise, t)
    assert float(terms["kl"]) > 0
    (grad,) = torch.autograd.grad(total, output)
    assert grad[:, 2:].abs().sum() > 0  # the KL reaches the variance channels ...
    # ... but the noise channels get exactly the gradient of L_eps (the KL's mean uses a detached eps).
    torch.testing.assert_close(grad[:, :2], 2 * (output[:, :2] - noise).detach() / output[0, :2].numel() / 2)


# ---------------------------------------------------------------------------------------------------
# Blocks and networks: shapes
# ---------------------------------------------------------------------------------------------------


def test_block_shapes() -> None:
    x = torch.randn(2, 8, 6, 10)
    emb = torch.randn(2, 32)
    assert BottleneckResBlock(8, 16, 32)(x, emb).shape == (2, 16, 6, 10)
    assert PlainResBlock(8, 16, 32)(x, emb).shape == (2, 16, 6, 10)
    assert AFF(8)(x, x.flip(-1)).shape == x.shape
    assert LargeKernelFusion(8)(x).shape == x.shape
    torch.testing.assert_close(LargeKernelFusion(8)(x), x)  # zero-initialised branch: starts as the identity
    assert TransformerBlock(8, 4, heads=2)(x, torch.randn(2, 4, 6, 10)).shape == x.shape
    assert timestep_embedding(torch.tensor([0.0, 3.5]), 7).shape == (2, 7)


@pytest.mark.parametrize("ablation", [None, *ABLATIONS])
def test_network_output_shape_for_every_ablation(ablation: str | None) -> None:
    config = tiny_config() if ablation is None else tiny_config().ablated([ablation])
    net = LatentEpsNet(config)
    x = torch.randn(2, 4, 6, 6)
    cond = torch.randn(2, config.condition_channels, 6, 6)
    out = net(x, torch.tensor([5, 900]), cond, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert out.shape == (2, 8, 6, 6)
    assert (config.condition_channels == 2 * 4 + 7) == (ablation != "guidance")
    assert LatentEpsNet(replace(config, learned_variance=False))(x, torch.tensor([1.5, 2.0]), cond,
                                                                  torch.ones(2, 2)).shape == (2, 4, 6, 6)


def test_model_encodes_and_decodes_at_the_autoencoder_factor() -> None:
    model = CoLaDiffModel(tiny_config())
    latents = model.encode(torch.rand(3, 1, 24, 24))
    assert latents.shape == (3, 4, 6, 6)
    assert model.decode(latents).shape == (3, 1, 24, 24)
    assert not any(p.requires_grad for p in model.autoencoder.parameters())


def test_presets_load_and_configs_round_trip() -> None:
    for name in ("cpu", "paper"):
        preset = load_preset(name)
        config = CoLaDiffConfig(autoencoder=preset.autoencoder, spacing_mm=preset.autoencoder.spacing_mm,
                                model_shape=preset.autoencoder.model_shape, **preset.model)
        assert CoLaDiffConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert load_preset("paper").autoencoder.model_shape[:2] == (224, 224)
    with pytest.raises(InputError, match="unknown keys"):
        CoLaDiffConfig.from_dict({**tiny_config().to_dict(), "typo": 1})
    with pytest.raises(InputError, match="unknown ablation"):
        tiny_config().ablated(["filters"])


# ---------------------------------------------------------------------------------------------------
# End to end through the CLI on tiny subjects
# ---------------------------------------------------------------------------------------------------

runner = CliRunner()
# 5 mm voxels: the tiny heads of engine_fixtures then have an adult brain volume (the brain-mask check).
AFFINE = np.array([[-5.0, 0, 0, 70.0], [0, 5.0, 0, -75.0], [0, 0, 5.0, -60.0], [0, 0, 0, 1]])
TINY_TOML = """
[autoencoder]
channels = [8, 16, 16]
attention_levels = [false, false, false]
norm_num_groups = 8
contrasts = ["T1", "T2", "FLAIR"]
spacing_mm = 6.0
model_shape = [24, 24, 20]
batch_size = 4

[autoencoder_training]
learning_rate = 2e-3
weight_decay = 0.0
ema_decay = 0.9
warmup_steps = 1

[model]
batch_size = 4
channels = [16, 32]
attention_downsample = [2]
heads = 2
context_channels = 16
group_size = 4
block_size = 2
block_stride = 1
wavelet = "db2"
wavelet_levels = 2
sampling_steps = 3
validation_steps = 2
validation_slices = 2

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
    root = tmp_path_factory.mktemp("cola")
    data = root / "data"
    for i in range(3):
        folder = data / f"subj{i:02d}"
        folder.mkdir(parents=True)
        for contrast, image in head(i).items():
            write_nifti(folder / f"{contrast}.nii.gz", image, AFFINE)
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    env = {"MRSYNTH_HOME": str(root / "home")}
    ae = invoke("train", "autoencoder", "--data", str(data), "--out", str(root / "ae"), "--config", str(config),
                "--max-steps", "3", "--validation-subject", "subj02", "--validate-every", "3", "--device", "cpu",
                env=env)
    assert ae.exit_code == 0, ae.output
    common = ["train", "cola-diff", "--data", str(data), "--target", "flair", "--inputs", "t1", "t2", "--autoencoder",
              str(root / "ae" / "checkpoint"), "--out", str(root / "run"), "--config", str(config), "--device", "cpu",
              "--checkpoint-every", "2", "--validation-subject", "subj02", "--validate-every", "4"]
    first = invoke(*common, "--max-steps", "2", env=env)
    assert first.exit_code == 0, first.output
    again = invoke(*common, "--max-steps", "2", env=env)
    resumed = invoke(*common, "--max-steps", "4", "--resume", env=env)
    assert resumed.exit_code == 0, resumed.output
    return {"root": root, "data": data, "env": env, "again": again, "config": config}


def test_autoencoder_run_reports_reconstruction_metrics(flow) -> None:
    log = [json.loads(line) for line in (flow["root"] / "ae" / "train_log.jsonl").read_text().splitlines()]
    validation = [r["validation"] for r in log if "validation" in r][-1]
    assert {"psnr", "ssim", "psnr_T1", "ssim_FLAIR"} <= set(validation)
    meta = json.loads((flow["root"] / "ae" / "checkpoint" / "config.json").read_text())
    assert meta["family"] == "cola-diff-autoencoder" and meta["config"]["contrasts"] == ["T1", "T2", "FLAIR"]


def test_cola_diff_checkpoint_embeds_the_autoencoder_and_resumes(flow) -> None:
    from safetensors.torch import load_file

    from mrsynth_cli.weights.store import sha256_of

    assert flow["again"].exit_code == 2 and "--resume" in flow["again"].output
    ckpt = flow["root"] / "run" / "checkpoint"
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["family"] == "cola-diff" and meta["step"] == 4 and meta["config"]["inputs"] == ["T1", "T2"]
    assert meta["config"]["autoencoder_sha256"] == sha256_of(flow["root"] / "ae" / "checkpoint" / "model.safetensors")
    assert meta["training"]["weight_decay"] == 0.0 and meta["config"]["structural_guidance"] is True
    weights = load_file(str(ckpt / "model.safetensors"))
    assert any(k.startswith("autoencoder.") for k in weights) and any(k.startswith("eps.") for k in weights)
    assert float(weights["latent_scale"]) > 0
    ae = load_file(str(flow["root"] / "ae" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(weights[k], ae[k]) for k in ae if k.startswith("autoencoder."))
    log = [json.loads(line) for line in (flow["root"] / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "validation" in r] == [2, 4]  # end of the first run, then step 4


def test_tissue_maps_cached_per_input_subset_never_from_the_target(flow) -> None:
    from mrsynth_cli.io.contrasts import Contrast
    from mrsynth_cli.training.data import TissueRequest, load_training_subjects

    cache = Path(flow["env"]["MRSYNTH_HOME"]) / "cache"  # paths.cache_dir() under that MRSYNTH_HOME
    assert list((cache / "tissues").glob("*.npz"))  # written by the training run
    request = TissueRequest(method="auto", sources=(Contrast.T1, Contrast.T2), subsets=True)
    subjects = load_training_subjects([flow["data"]], [Contrast.FLAIR, Contrast.T1, Contrast.T2],
                                      required=[Contrast.FLAIR], spacing_mm=6.0, model_shape=(24, 24, 20),
                                      cache_dir=cache, tissues=request)
    keys = set(subjects[0].tissues)
    assert keys == {(Contrast.T1,), (Contrast.T2,), (Contrast.T1, Contrast.T2)}
    maps = subjects[0].tissues[(Contrast.T1, Contrast.T2)]
    assert set(maps) == {"CSF", "GM", "WM", "abnormal", "pve_CSF", "pve_GM", "pve_WM"}
    assert maps["pve_GM"].shape == (24, 24, 20) and maps["pve_GM"].max() <= 1.0
    plain = load_training_subjects([flow["data"]], [Contrast.FLAIR, Contrast.T1], required=[Contrast.FLAIR],
                                   spacing_mm=6.0, model_shape=(24, 24, 20), cache_dir=cache)
    assert plain[0].tissues == {}  # without a request nothing changes (backwards compatible)


def test_import_and_synthesize_samples_with_uncertainty(flow, tmp_path: Path) -> None:
    env = flow["env"]
    refused = invoke("weights", "import", str(flow["root"] / "ae" / "checkpoint"), "--name", "ae", env=env)
    assert refused.exit_code == 2 and "autoencoder" in refused.output
    imported = invoke("weights", "import", str(flow["root"] / "run" / "checkpoint"), "--name", "tiny-cola", env=env)
    assert imported.exit_code == 0, imported.output
    listed = {r["name"]: r for r in json.loads(invoke("weights", "list", "--json", env=env).output)}
    assert listed["tiny-cola"]["inputs"] == ["T1", "T2"] and listed["tiny-cola"]["geometry"]["latent"] == [4, 6, 6]
    subj = flow["data"] / "subj02"
    out, unc = tmp_path / "FLAIR_synth.nii.gz", tmp_path / "u.nii.gz"
    result = invoke("synthesize", "--in", f"t1={subj / 'T1.nii.gz'}", f"t2={subj / 'T2.nii.gz'}", "--target", "flair",
                    "--out", str(out), "--model", "tiny-cola", "--samples", "2", "--uncertainty", str(unc), "--steps",
                    "3", "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    source = nib.load(str(subj / "T1.nii.gz"))
    for path in (out, unc):
        image = nib.load(str(path))
        assert image.shape == source.shape
        np.testing.assert_array_equal(image.affine, source.affine)
    data, spread = nib.load(str(out)).get_fdata(), nib.load(str(unc)).get_fdata()
    assert np.all(data[source.get_fdata() == 0] == 0) and data.max() > 0 and spread.max() > 0
    sidecar = json.loads(out.with_name("FLAIR_synth.json").read_text())
    assert sidecar["Model"]["Family"] == "cola-diff" and sidecar["Samples"] == 2 and sidecar["Steps"] == 3
    fast = invoke("synthesize", "--in", f"t1={subj / 'T1.nii.gz'}", "--target", "flair", "--out",
                  str(tmp_path / "fast.nii.gz"), "--model", "tiny-cola", "--sampler", "fast", "--steps", "2",
                  "--device", "cpu", env=env)
    assert fast.exit_code == 0, fast.output  # one input of two, Kong & Ping's sampler
