"""ALDM: the switchable SPADE selection, the vector quantiser's gradients and codebook updates, the
ablation switches, and the whole CLI flow (vqgan -> spade -> ldm, resume, import, one-to-many synthesis)
on tiny heads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.errors import InputError
from mrsynth_cli.families.aldm.config import ABLATIONS, AldmConfig, load_preset
from mrsynth_cli.families.aldm.inference import build_sampler, translate
from mrsynth_cli.families.aldm.network import AldmModel
from mrsynth_cli.families.aldm.spade import MSSPADE
from mrsynth_cli.families.aldm.vqgan import LatentAutoencoder, VectorQuantizer
from mrsynth_cli.io.contrasts import Contrast
from tests.conftest import write_nifti
from tests.engine_fixtures import head


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**changes) -> AldmConfig:
    base = AldmConfig(
        contrasts=("T1", "T2", "FLAIR"), spacing_mm=8.0, model_shape=(16, 16, 16), ae_channels=(8, 8, 8),
        ae_norm_num_groups=4, ae_num_embeddings=32, spade_channels=8, spade_hidden=8, ldm_channels=(16, 16),
        ldm_attention_levels=(False, True), ldm_norm_num_groups=8, ldm_num_head_channels=8, sampling_steps=3,
    )
    return replace(base, **changes)


# ---------------------------------------------------------------------------------------------------
# MS-SPADE
# ---------------------------------------------------------------------------------------------------


def _spade_grads(spade: MSSPADE) -> list[list[bool]]:
    """Per SPADE layer, per target set: whether any of its parameters got a non-zero gradient."""
    out = []
    for block in spade.spade_blocks:
        for norm in (block.norm_0, block.norm_1):
            out.append([any(p.grad is not None and p.grad.abs().sum() > 0 for p in n.parameters()) for n in norm.norms])
    return out


def test_switchable_spade_uses_only_the_chosen_targets_parameters() -> None:
    torch.manual_seed(0)
    spade = MSSPADE(tiny())
    z = torch.randn(1, 3, 4, 4, 4)
    spade(z, torch.tensor([1])).pow(2).sum().backward()
    assert _spade_grads(spade) == [[False, True, False]] * 4  # 2 blocks x 2 layers; only set 1 learns
    spade.zero_grad(set_to_none=True)
    spade(torch.cat([z, z]), torch.tensor([2, 0])).pow(2).sum().backward()
    assert _spade_grads(spade) == [[True, False, True]] * 4


def test_switchable_spade_output_depends_on_the_target_and_batches_like_single_samples() -> None:
    torch.manual_seed(0)
    spade = MSSPADE(tiny())
    with torch.no_grad():  # make the per-target sets differ (fresh MONAI SPADEs are random anyway)
        for p in spade.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z = torch.randn(2, 3, 4, 4, 4)
    outputs = [spade(z[:1], torch.tensor([t])) for t in range(3)]
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
    mixed = spade(z, torch.tensor([2, 0]))
    torch.testing.assert_close(mixed[0:1], outputs[2], atol=1e-4, rtol=1e-4)  # batched convs round differently
    torch.testing.assert_close(mixed[1:2], spade(z[1:2], torch.tensor([0])), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Vector quantiser
# ---------------------------------------------------------------------------------------------------


def test_quantiser_straight_through_and_loss_terms() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(8, 3, commitment=0.25, update="loss")
    with torch.no_grad():
        q.embedding.copy_(torch.randn(8, 3))
    z = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    out, loss, indices = q(z)
    flat = z.detach().movedim(1, -1).reshape(-1, 3)
    expected_idx = torch.cdist(flat, q.embedding.detach()).argmin(1)
    assert torch.equal(indices.flatten(), expected_idx)
    chosen = q.embedding.detach()[expected_idx]
    torch.testing.assert_close(out.detach().movedim(1, -1).reshape(-1, 3), chosen)
    mse = F.mse_loss(flat, chosen)
    torch.testing.assert_close(loss.detach(), 1.25 * mse)  # commitment (beta) + codebook term
    # Straight-through: a weight on the output reaches z unchanged.
    weight = torch.randn_like(out)
    (out * weight).sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, weight)
    assert q.embedding.grad is None or q.embedding.grad.abs().sum() == 0  # the output path does not train codes
    # The loss: the commitment term pulls z to its code, the codebook term pulls the used codes only.
    z.grad = None
    loss.backward()
    n = flat.numel()
    torch.testing.assert_close(z.grad.movedim(1, -1).reshape(-1, 3), 0.25 * 2 * (flat - chosen) / n)
    used = torch.zeros(8, dtype=torch.bool)
    used[expected_idx] = True
    grads = q.embedding.grad
    assert torch.all(grads[~used] == 0) and torch.all(grads[used].abs().sum(1) > 0)
    before = q.embedding.detach().clone()
    torch.optim.SGD([q.embedding], lr=1.0).step()
    moved = (q.embedding.detach() - before).abs().sum(1) > 0
    assert torch.equal(moved, used)


def test_ema_codebook_moves_restarts_dead_codes_and_only_in_training() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(16, 3, update="ema", decay=0.9, dead_code_threshold=0.01)
    assert not q.embedding.requires_grad
    data = torch.randn(1, 3, 4, 4, 4) * 3.0 + 1.0
    q.train()
    _, _, first = q(data)
    # First step: a used code moves to the mean of its vectors; every unused code is restarted on an
    # encoder output (a data-dependent initialisation).
    codes = q.embedding.detach()
    flat = data.movedim(1, -1).reshape(-1, 3)
    used = torch.zeros(16, dtype=torch.bool)
    used[first.flatten()] = True
    assert 0 < used.sum() < 16
    for k in range(16):
        members = flat[first.flatten() == k]
        target = members.mean(0) if used[k] else flat[torch.cdist(codes[k:k + 1], flat).argmin()]
        torch.testing.assert_close(codes[k], target, atol=1e-3, rtol=1e-3)
    assert torch.cdist(codes[~used], flat).min(1).values.max() < 1e-5
    for _ in range(20):
        _, _, indices = q(data)
    error = (q(data)[0] - data).pow(2).mean()
    assert error < data.var() * 0.2  # the codebook has learned the data
    snapshot = q.embedding.detach().clone()
    q(data, update_codebook=False)
    q.eval()
    q(data)
    assert torch.equal(q.embedding.detach(), snapshot)


def test_encoder_gets_gradient_through_the_quantiser() -> None:
    torch.manual_seed(0)
    ae = LatentAutoencoder(tiny())
    x = torch.rand(1, 1, 16, 16, 16)
    z, reg = ae.regularise(ae.encode_continuous(x))
    ((ae.decode(z) - x).abs().mean() + reg).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ae.encoder.parameters() if p.ndim > 1)
    assert ae.quantizer.embedding.grad is None  # EMA mode: the codebook is not a gradient parameter


def test_kl_autoencoder_regularises_with_a_sample() -> None:
    ae = LatentAutoencoder(tiny(ae_regularisation="kl"))
    assert ae.quantizer is None
    h = ae.encode_continuous(torch.rand(1, 1, 16, 16, 16))
    assert h.shape[1] == 6
    z, kl = ae.regularise(h, torch.randn(1, 3, 4, 4, 4))
    assert z.shape == (1, 3, 4, 4, 4) and kl > 0


# ---------------------------------------------------------------------------------------------------
# Ablations, configs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", [None, *ABLATIONS])
def test_every_ablation_translates_to_every_target(ablation: str | None) -> None:
    config = tiny().ablated([ablation] if ablation else [])
    torch.manual_seed(0)
    model = AldmModel(config)
    assert (model.unet is None) == (ablation == "spade-only")
    if model.unet is not None:
        expected = 3 if ablation == "diffusion-only" else 6
        assert model.unet.conv_in.conv.in_channels == expected
    source = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    out = translate(model, config, source, [Contrast.T2, Contrast.FLAIR], sampler=build_sampler(config, "ddim", 2),
                    generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert set(out) == {Contrast.T2, Contrast.FLAIR}
    assert all(v.shape == (16, 16, 16) and 0 <= v.min() and v.max() <= 1 for v in out.values())


def test_presets_load_and_configs_are_strict() -> None:
    for name in ("cpu", "paper"):
        preset = load_preset(name)
        config = AldmConfig.from_dict(preset.model)
        assert config.latent_shape == tuple(n // 4 for n in config.model_shape)
        assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.0015, 0.0195)
        assert AldmConfig.from_dict(config.to_dict()) == config
    assert load_preset("paper").training["ldm"]["learning_rate"] == 2e-6
    with pytest.raises(InputError, match="unknown keys"):
        AldmConfig.from_dict({"ae_chanels": [8]})
    with pytest.raises(InputError, match="divide"):
        AldmConfig(model_shape=(18, 16, 16))
    with pytest.raises(InputError, match="unknown aldm ablation"):
        tiny().ablated(["nothing"])


# ---------------------------------------------------------------------------------------------------
# The CLI flow
# ---------------------------------------------------------------------------------------------------

runner = CliRunner()
AFFINE = np.array([[-5.0, 0, 0, 70.0], [0, 5.0, 0, -75.0], [0, 0, 5.0, -60.0], [0, 0, 0, 1]])
TINY_TOML = """
[model]
contrasts = ["T1", "T2", "FLAIR"]
spacing_mm = 8.0
model_shape = [16, 16, 16]
ae_channels = [8, 8, 8]
ae_norm_num_groups = 4
ae_num_embeddings = 32
ae_adversarial_weight = 0.1
ae_discriminator_channels = 4
ae_discriminator_layers = 2
spade_channels = 8
spade_hidden = 8
ldm_channels = [16, 16]
ldm_attention_levels = [false, true]
ldm_norm_num_groups = 8
ldm_num_head_channels = 8
sampling_steps = 3

[vqgan_training]
learning_rate = 2e-3
weight_decay = 0.0
ema_decay = 0.9
warmup_steps = 1

[spade_training]
learning_rate = 2e-3
warmup_steps = 1

[ldm_training]
learning_rate = 1e-3
warmup_steps = 1
"""


def invoke(*args: str, env: dict[str, str]):
    return runner.invoke(app, expand_multi_value_options(list(args)), env={"MRSYNTH_DEBUG": "0", **env})


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("aldm")
    data = root / "data"
    for i in range(3):
        folder = data / f"subj{i:02d}"
        folder.mkdir(parents=True)
        for contrast, image in head(i).items():
            write_nifti(folder / f"{contrast}.nii.gz", image, AFFINE)
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    env = {"MRSYNTH_HOME": str(root / "home")}
    base = ["train", "aldm", "--data", str(data), "--config", str(config), "--device", "cpu", "--checkpoint-every", "2"]
    runs = {}
    runs["vqgan"] = invoke(*base, "--stage", "vqgan", "--out", str(root / "vq"), "--max-steps", "2",
                           "--validation-subject", "subj02", "--validate-every", "2", env=env)
    runs["vqgan_resumed"] = invoke(*base, "--stage", "vqgan", "--out", str(root / "vq"), "--max-steps", "3", "--resume",
                                   "--validation-subject", "subj02", "--validate-every", "2", env=env)
    runs["spade_without"] = invoke(*base, "--stage", "spade", "--out", str(root / "sp0"), env=env)
    runs["spade"] = invoke(*base, "--stage", "spade", "--out", str(root / "sp"), "--max-steps", "3",
                           "--autoencoder", str(root / "vq" / "checkpoint"), env=env)
    runs["ldm_wrong"] = invoke(*base, "--stage", "ldm", "--out", str(root / "bad"), "--spade",
                               str(root / "vq" / "checkpoint"), env=env)
    runs["ldm"] = invoke(*base, "--stage", "ldm", "--out", str(root / "ldm"), "--max-steps", "2",
                         "--spade", str(root / "sp" / "checkpoint"), env=env)
    runs["ldm_resumed"] = invoke(*base, "--stage", "ldm", "--out", str(root / "ldm"), "--max-steps", "4", "--resume",
                                 "--spade", str(root / "sp" / "checkpoint"), env=env)
    return {"root": root, "data": data, "env": env, "runs": runs}


def test_stages_chain_and_resume_continues_the_step_count(flow) -> None:
    from safetensors.torch import load_file

    runs, root = flow["runs"], flow["root"]
    for name in ("vqgan", "vqgan_resumed", "spade", "ldm", "ldm_resumed"):
        assert runs[name].exit_code == 0, (name, runs[name].output)
    assert runs["spade_without"].exit_code == 2 and "--autoencoder" in runs["spade_without"].output
    assert runs["ldm_wrong"].exit_code == 2 and "aldm-vqgan" in runs["ldm_wrong"].output
    metas = {k: json.loads((root / k / "checkpoint" / "config.json").read_text()) for k in ("vq", "sp", "ldm")}
    assert [metas[k]["family"] for k in ("vq", "sp", "ldm")] == ["aldm-vqgan", "aldm-spade", "aldm"]
    assert metas["vq"]["step"] == 3 and metas["ldm"]["step"] == 4 and metas["sp"]["step"] == 3
    log = [json.loads(line) for line in (root / "vq" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "validation" in r] == [2, 3] and "recon_psnr" in log[-1]["validation"]
    vq, sp, ldm = (load_file(str(root / k / "checkpoint" / "model.safetensors")) for k in ("vq", "sp", "ldm"))
    assert any(k.startswith("discriminator.") for k in vq) and not any(k.startswith("discriminator.") for k in ldm)
    # The autoencoder is frozen after stage 1; MS-SPADE after stage 2; the ldm file holds everything.
    assert all(torch.equal(sp[k], vq[k]) for k in vq if k.startswith("autoencoder."))
    assert any(not torch.equal(sp[k], vq[k]) for k in vq if k.startswith("spade."))
    assert all(torch.equal(ldm[k], sp[k]) for k in sp if k.startswith(("autoencoder.", "spade.")))
    assert any(k.startswith("unet.") for k in ldm) and float(ldm["latent_scale"]) > 0


def test_import_and_one_to_many_synthesis_on_the_input_grid(flow, tmp_path: Path) -> None:
    env = flow["env"]
    refused = invoke("weights", "import", str(flow["root"] / "vq" / "checkpoint"), "--name", "vq", env=env)
    assert refused.exit_code == 2 and "aldm-vqgan stage checkpoint" in refused.output
    imported = invoke("weights", "import", str(flow["root"] / "ldm" / "checkpoint"), "--name", "tiny-aldm", env=env)
    assert imported.exit_code == 0, imported.output
    listed = {r["name"]: r for r in json.loads(invoke("weights", "list", "--json", env=env).output)}
    assert listed["tiny-aldm"]["outputs"] == ["T1", "T2", "FLAIR"]
    subj = flow["data"] / "subj02"
    result = invoke("synthesize", "--in", f"t1={subj / 'T1.nii.gz'}", "--target", "t2", "flair", "--out-dir",
                    str(tmp_path), "--model", "tiny-aldm", "--steps", "2", "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    source = nib.load(str(subj / "T1.nii.gz"))
    written = sorted(tmp_path.glob("*.nii.gz"))
    assert [p.name for p in written] == ["T1_desc-synth_FLAIR.nii.gz", "T1_desc-synth_T2.nii.gz"]
    for path in written:
        image = nib.load(str(path))
        assert image.shape == source.shape
        np.testing.assert_array_equal(image.affine, source.affine)
        values = image.get_fdata()
        assert np.all(values[source.get_fdata() == 0] == 0) and values.max() > 0
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Model"]["Family"] == "aldm" and sidecar["Steps"] == 2


@pytest.mark.slow
def test_synthesis_on_a_simulated_phantom_undoes_the_crop(flow, tmp_path: Path) -> None:
    """A 4 mm phantom head (larger than the 16^3 model grid at 8 mm: cropped) -> outputs on its own grid."""
    from mrsynth_cli.phantom import simulate_subject, subject_rng

    env = flow["env"]
    assert invoke("weights", "import", str(flow["root"] / "ldm" / "checkpoint"), "--name", "tiny-aldm-2",
                  env=env).exit_code == 0
    phantom = simulate_subject(subject_rng(0, 0), 4.0, "none", 3.0, False)
    t2 = write_nifti(tmp_path / "sub-ph_T2w.nii.gz", phantom.images[Contrast.T2], phantom.affine)
    out = tmp_path / "out"
    result = invoke("synthesize", "--in", f"t2={t2}", "--target", "t1", "flair", "--out-dir", str(out), "--model",
                    "tiny-aldm-2", "--steps", "2", "--sampler", "fast", "--device", "cpu", env=env)
    assert result.exit_code == 0, result.output
    for target in ("T1", "FLAIR"):
        image = nib.load(str(out / f"sub-ph_T2w_desc-synth_{target}.nii.gz"))
        assert image.shape == phantom.images[Contrast.T2].shape
        np.testing.assert_allclose(image.affine, phantom.affine, atol=1e-5)
        sidecar = json.loads((out / f"sub-ph_T2w_desc-synth_{target}.json").read_text())
        crop = [g for g in sidecar["Preprocessing"]["geometry"] if g["op"] == "croppad"][-1]
        assert crop["shape_after"] == [16, 16, 16] and any(n > 16 for n in crop["shape_before"])  # a real crop
        assert sidecar["SourceContrasts"] == ["T2"]
