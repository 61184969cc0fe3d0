"""MRDiff: the physics module against the phantom's ground truth, the sub-band transform, the losses, where
TR/TE come from, and the whole CLI flow (train, resume, import, synthesize) on tiny phantom subjects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pywt
import torch
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.errors import InputError
from mrsynth_cli.families.mrdiff.config import MRDiffConfig, load_preset
from mrsynth_cli.families.mrdiff.inference import noise_schedule
from mrsynth_cli.families.mrdiff.losses import consistency_loss, mrdiff_loss
from mrsynth_cli.families.mrdiff.network import MRDiffNetwork
from mrsynth_cli.families.mrdiff.physics import (
    PhysicsModule,
    acquisition_tensor,
    mr_signal,
    parse_acquisition_flags,
    protocol_mismatches,
    resolve_acquisition,
)
from mrsynth_cli.families.mrdiff.subbands import Subbands
from mrsynth_cli.io.contrasts import Contrast
from mrsynth_cli.phantom.dataset import simulate_dataset
from mrsynth_cli.phantom.imaging import SIGNAL_SCALE


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Two 4 mm phantom subjects (BIDS with sidecars, ground truth under derivatives/phantom).

    Skull-stripped with their true brain masks (as BraTS-style data), so that preprocessing detects
    stripped inputs instead of registering a template, and the test stays fast.
    """
    root = tmp_path_factory.mktemp("mrdiff") / "phantom"
    simulate_dataset(root, 2, seed=3, resolution_mm=4.0)
    for anat in root.glob("sub-*/anat"):
        label = anat.parent.name
        mask = nib.load(str(root / "derivatives" / "phantom" / label / "anat" / f"{label}_desc-brain_mask.nii.gz"))
        inside = np.asarray(mask.dataobj) > 0
        for path in anat.glob("*.nii.gz"):
            image = nib.load(str(path))
            data = np.where(inside, np.asarray(image.dataobj, dtype=np.float32), 0.0).astype(np.float32)
            nib.save(nib.Nifti1Image(data, image.affine, image.header), str(path))
    return root


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------
# The physics module against the phantom
# ---------------------------------------------------------------------------------------------------

SPIN_ECHO_AND_IR = {Contrast.T1: "T1w", Contrast.T2: "T2w", Contrast.PD: "PDw", Contrast.FLAIR: "FLAIR"}


def test_signal_equation_on_true_maps_reproduces_the_phantom_contrasts(phantoms: Path) -> None:
    """Fed the true T1/T2/PD maps and each sidecar's TR/TE/TI, the physics module's signals (eq. 6, IR for FLAIR)
    are the phantom's images up to noise.

    The phantom's image of a voxel is M0 * sum_k f_k S(PD_k, T1_k, T2_k) with M0 = SIGNAL_SCALE, times a
    smooth bias field (+-10-20 %), plus Rician noise of sigma = WM signal / SNR. In voxels of one tissue
    (fraction > 0.9) the maps hold that tissue's values, so the median relative error must be within a few
    noise levels; every image must also be matched best by its own protocol.
    """
    label = sorted(p.name for p in phantoms.glob("sub-*"))[0]
    anat, truth = phantoms / label / "anat", phantoms / "derivatives" / "phantom" / label / "anat"
    t1, t2, pd = (_load(truth / f"{label}_{m}map.nii.gz") for m in ("T1", "T2", "PD"))
    brain = (_load(truth / f"{label}_desc-brain_mask.nii.gz") > 0) & (pd > 0)
    fractions = torch.stack([_load(truth / f"{label}_label-{n}_probseg.nii.gz") for n in ("GM", "WM", "CSF")])
    pure = brain & (fractions.max(0).values > 0.9)
    assert int(pure.sum()) > 1000
    files = {c: anat / f"{label}_{suffix}.nii.gz" for c, suffix in SPIN_ECHO_AND_IR.items()}
    contrasts = list(files)
    acquisition = acquisition_tensor(contrasts, resolve_acquisition(contrasts, files))
    assert acquisition[3, 2] > 0 and acquisition[0, 2] == 0  # FLAIR has a TI, T1w none
    shape = t1.shape
    flat = [m.reshape(1, 1, shape[0], -1) for m in (t1, t2, pd)]  # (B, m, H, W) with the volume as one map
    # Every image under every protocol: (1, K, X, Y*Z), condition-major as in the module.
    signals = PhysicsModule.signals(*flat, acquisition[None]).reshape(len(contrasts), *shape) * SIGNAL_SCALE
    for i, (contrast, path) in enumerate(files.items()):
        image = _load(path)
        snr = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())["PhantomSNR"]
        errors, correlations = [], []
        for signal in signals:
            errors.append(float(((signal - image).abs() / image.clamp(min=1e-6))[pure].median()))
            correlations.append(float(np.corrcoef(signal[brain].numpy(), image[brain].numpy())[0, 1]))
        assert errors[i] < 2.5 / snr, (contrast, errors, snr)
        assert int(np.argmin(errors)) == i and int(np.argmax(correlations)) == i, (contrast, errors, correlations)
        assert correlations[i] > 0.5, (contrast, correlations)  # PD: low contrast, noise-limited


def test_physics_module_maps_are_positive_and_use_each_condition() -> None:
    torch.manual_seed(0)
    module = PhysicsModule(channels=16, conditions=2, map_channels=3, t1_unit_s=1.0, t2_unit_s=0.1)
    e_t = torch.randn(2, 16, 5, 6)
    t1, t2, s0 = module.maps(e_t)
    assert t1.shape == (2, 3, 10, 12) and bool((t1 > 0).all() & (t2 > 0).all() & (s0 >= 0).all())
    spin_echo = torch.tensor([[[0.6, 0.01, 0.0], [5.0, 0.1, 0.0]]] * 2)
    out = module(e_t, spin_echo)
    assert out.shape == (2, 16, 5, 6)
    swapped = module(e_t, spin_echo.flip(1))  # the conditions' parameters matter, in order
    assert not torch.allclose(out, swapped)
    inversion = spin_echo.clone()
    inversion[:, 1, 2] = 2.5
    assert not torch.allclose(out, module(e_t, inversion))


def test_inversion_recovery_nulls_the_tissue_at_its_null_point() -> None:
    t1 = torch.tensor([4.0])
    tr = torch.tensor(9.0)
    ti = t1 * np.log(2.0 / (1.0 + np.exp(-9.0 / 4.0)))
    assert float(mr_signal(torch.ones(1), t1, torch.ones(1), tr, torch.tensor(0.0), ti)) < 1e-6
    assert float(mr_signal(torch.ones(1), t1, torch.ones(1), tr, torch.tensor(0.0), torch.tensor(0.0))) > 0.8


# ---------------------------------------------------------------------------------------------------
# Sub-bands, losses
# ---------------------------------------------------------------------------------------------------


def test_subbands_are_pywavelets_haar_and_invert_exactly() -> None:
    x = torch.randn(2, 3, 16, 20, dtype=torch.float64)
    transform = Subbands()
    bands = transform.split(x)
    assert bands.shape == (2, 12, 8, 10)
    approx, (horizontal, vertical, diagonal) = pywt.dwt2(x[1, 2].numpy(), "haar", mode="periodization")
    for k, expected in enumerate((approx, horizontal, vertical, diagonal)):
        np.testing.assert_allclose(bands[1, 3 * k + 2].numpy(), expected, atol=1e-12)
    torch.testing.assert_close(transform.merge(bands), x, atol=1e-12, rtol=0)


def test_consistency_loss_hand_case() -> None:
    features = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 9.0]]])  # N = 3 copies, B = 1, two elements
    # mean (3, 5); deviations (-2, -3), (0, -1), (2, 4); squares sum to 34 over 6 elements
    assert float(consistency_loss(features)) == pytest.approx(34.0 / 6.0)
    assert float(consistency_loss(torch.ones(3, 2, 4))) == 0.0


def tiny_config(**changes) -> MRDiffConfig:
    values = dict(target="T2", inputs=("T1", "FLAIR"), model_shape=(16, 16, 8), batch_size=2, channels=(8, 16),
                  attention_levels=(False, True), heads=2, map_channels=2, num_train_timesteps=50,
                  sampling_steps=3, validation_steps=2, validation_slices=2)
    return MRDiffConfig(**{**values, **changes})


def test_total_loss_is_eq_11_and_every_part_trains() -> None:
    config = tiny_config()
    torch.manual_seed(0)
    network = MRDiffNetwork(config)
    x0, y = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 2, 16, 16) * 2 - 1
    acquisition = torch.tensor([[[0.6, 0.01, 0.0], [9.0, 0.09, 2.5]]] * 2)
    total, parts = mrdiff_loss(network, config, noise_schedule(config), x0, y, acquisition,
                               torch.Generator().manual_seed(1))
    assert set(parts) == {"L_G", "L_D", "L_CCT"} and parts["L_CCT"] > 0
    assert float(total.detach()) == pytest.approx(parts["L_G"] + parts["L_D"] + 0.01 * parts["L_CCT"], rel=1e-5)
    total.backward()
    for name in ("generator", "decoder", "physics", "down_levels", "stem"):
        grads = [p.grad for n, p in network.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads), name
    ablated = tiny_config().ablated(["physics", "consistency"])
    assert MRDiffNetwork(ablated).physics is None and ablated.copies == 1
    _, parts = mrdiff_loss(MRDiffNetwork(ablated), ablated, noise_schedule(ablated), x0, y, acquisition,
                           torch.Generator().manual_seed(1))
    assert set(parts) == {"L_G", "L_D"}


def test_presets_load_and_round_trip() -> None:
    for name in ("cpu", "paper"):
        preset = load_preset(name)
        config = MRDiffConfig(target="T2", inputs=("T1", "PD"), **preset.model)
        assert MRDiffConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        assert config.sampling_steps == 50 and config.consistency_copies == 3
        assert (config.lambda_g, config.lambda_d, config.lambda_cct) == (1.0, 1.0, 0.01)
    with pytest.raises(InputError, match="unknown keys"):
        MRDiffConfig.from_dict({"target": "T2", "inputs": ["T1"], "lambda_4": 1.0})


# ---------------------------------------------------------------------------------------------------
# Where TR/TE come from
# ---------------------------------------------------------------------------------------------------


def test_acquisition_from_sidecar_flags_or_a_clear_error(tmp_path: Path) -> None:
    t1 = tmp_path / "T1.nii.gz"
    t1.write_bytes(b"")
    (tmp_path / "T1.json").write_text(json.dumps({"RepetitionTime": 0.6, "EchoTime": 0.01}))
    flair = tmp_path / "FLAIR.nii.gz"
    flair.write_bytes(b"")
    files = {Contrast.T1: t1, Contrast.FLAIR: flair}
    with pytest.raises(InputError) as missing:
        resolve_acquisition([Contrast.T1, Contrast.FLAIR], files)
    assert "FLAIR.nii.gz" in missing.value.message and "TR/TE/TI" in missing.value.message
    assert "--tr" in missing.value.hint and "seconds" in missing.value.hint
    flags = parse_acquisition_flags(["flair=9", "t1=0.45"], ["flair=0.09"], ["flair=2.5"])
    with pytest.raises(InputError, match="TI of input FLAIR"):
        resolve_acquisition([Contrast.T1, Contrast.FLAIR], files, parse_acquisition_flags(["flair=9"], ["flair=0.09"]))
    resolved = resolve_acquisition([Contrast.T1, Contrast.FLAIR], files, flags)
    assert resolved[Contrast.T1].repetition_time == 0.45  # the flag overrides the sidecar's 0.6
    assert resolved[Contrast.T1].echo_time == 0.01  # the sidecar fills what the flags leave out
    assert resolved[Contrast.FLAIR].inversion_time == 2.5
    torch.testing.assert_close(acquisition_tensor([Contrast.FLAIR, Contrast.T1], resolved),
                               torch.tensor([[9.0, 0.09, 2.5], [0.45, 0.01, 0.0]]))
    trained = ((0.6, 0.01, 0.0), (9.0, 0.09, 2.5))
    assert protocol_mismatches([Contrast.T1, Contrast.FLAIR], acquisition_tensor([Contrast.T1, Contrast.FLAIR],
                                                                                 resolved), trained) == []
    far = torch.tensor([[0.008, 0.003, 0.0], [9.0, 0.09, 0.0]])  # a gradient-echo T1w; FLAIR without inversion
    lines = protocol_mismatches([Contrast.T1, Contrast.FLAIR], far, trained)
    assert len(lines) == 2 and lines[0].startswith("input T1: TR/TE/TI 0.008/0.003/0 s")
    assert protocol_mismatches([Contrast.T1], far[:1], ()) == []  # unknown training protocol: nothing to say
    with pytest.raises(InputError, match="milliseconds"):
        parse_acquisition_flags(["t1=450"])
    with pytest.raises(InputError, match="contrast=seconds"):
        parse_acquisition_flags(["t1:0.45"])
    with pytest.raises(InputError, match="not among the inputs"):
        resolve_acquisition([Contrast.T1], {Contrast.T1: t1}, parse_acquisition_flags(te=["t2=0.1"]))


# ---------------------------------------------------------------------------------------------------
# End to end through the CLI on phantom subjects
# ---------------------------------------------------------------------------------------------------

runner = CliRunner()
TINY_TOML = """
[model]
spacing_mm = 8.0
model_shape = [24, 24, 20]
batch_size = 2
channels = [8, 16]
attention_levels = [false, false]
heads = 2
map_channels = 2
num_train_timesteps = 100
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
def flow(phantoms: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mrdiff-flow")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    env = {"MRSYNTH_HOME": str(root / "home")}
    subjects = sorted(p.name for p in phantoms.glob("sub-*"))
    common = ["train", "mrdiff", "--data", str(phantoms), "--target", "t2", "--inputs", "t1", "flair", "--out",
              str(root / "run"), "--config", str(config), "--device", "cpu", "--checkpoint-every", "2",
              "--validation-subject", subjects[-1], "--validate-every", "4"]
    first = invoke(*common, "--max-steps", "2", env=env)
    assert first.exit_code == 0, first.output
    again = invoke(*common, "--max-steps", "2", env=env)
    resumed = invoke(*common, "--max-steps", "4", "--resume", env=env)
    assert resumed.exit_code == 0, resumed.output
    imported = invoke("weights", "import", str(root / "run" / "checkpoint"), "--name", "tiny-mrdiff", env=env)
    assert imported.exit_code == 0, imported.output
    return {"root": root, "env": env, "again": again, "subject": phantoms / subjects[-1] / "anat"}


def test_training_resumes_and_records_the_config(flow) -> None:
    assert flow["again"].exit_code == 2 and "--resume" in flow["again"].output
    meta = json.loads((flow["root"] / "run" / "checkpoint" / "config.json").read_text())
    assert meta["family"] == "mrdiff" and meta["step"] == 4 and meta["config"]["inputs"] == ["T1", "FLAIR"]
    t1_protocol, flair_protocol = meta["config"]["training_acquisition"]  # the phantom's sidecars, per input
    assert t1_protocol[2] == 0.0 and flair_protocol[0] == 9.0 and flair_protocol[2] > 2.0
    log = [json.loads(line) for line in (flow["root"] / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "validation" in r] == [2, 4]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


def test_synthesize_with_sidecars_flags_or_a_clear_error(flow, tmp_path: Path) -> None:
    env, anat = flow["env"], flow["subject"]
    label = anat.parent.name
    t1, flair = anat / f"{label}_T1w.nii.gz", anat / f"{label}_FLAIR.nii.gz"
    out = tmp_path / "T2_synth.nii.gz"
    args = ["synthesize", "--target", "t2", "--model", "tiny-mrdiff", "--device", "cpu", "--steps", "3",
            "--registration", "none"]
    result = invoke(*args, "--in", f"t1={t1}", f"flair={flair}", "--out", str(out), env=env)
    assert result.exit_code == 0, result.output
    source = nib.load(str(t1))
    image = nib.load(str(out))
    assert image.shape == source.shape and np.allclose(image.affine, source.affine)
    assert np.isfinite(image.get_fdata()).all() and image.get_fdata().max() > 0
    sidecar = json.loads(out.with_name("T2_synth.json").read_text())
    flair_meta = json.loads(flair.with_name(f"{label}_FLAIR.json").read_text())
    assert sidecar["Model"]["Family"] == "mrdiff" and sidecar["Steps"] == 3
    assert sidecar["AcquisitionParameters"]["FLAIR"] == {
        "RepetitionTime": flair_meta["RepetitionTime"], "EchoTime": flair_meta["EchoTime"],
        "InversionTime": flair_meta["InversionTime"],
    }
    # Copies without sidecars: a clear error and no output, then the same with flags.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(t1, bare / "T1.nii.gz")
    shutil.copy(flair, bare / "FLAIR.nii.gz")
    refused_out = tmp_path / "refused.nii.gz"
    refused = invoke(*args, "--in", f"t1={bare / 'T1.nii.gz'}", f"flair={bare / 'FLAIR.nii.gz'}", "--out",
                     str(refused_out), env=env)
    assert refused.exit_code == 2 and "T1.nii.gz" in refused.output and "--tr" in refused.output
    assert not refused_out.exists()
    flagged_out = tmp_path / "flagged.nii.gz"
    flagged = invoke(*args, "--in", f"t1={bare / 'T1.nii.gz'}", f"flair={bare / 'FLAIR.nii.gz'}", "--out",
                     str(flagged_out), "--tr", "t1=0.45", "flair=9", "--te", "t1=0.0098", "flair=0.09", "--ti",
                     "flair=2.5", env=env)
    assert flagged.exit_code == 0, flagged.output
    record = json.loads(flagged_out.with_name("flagged.json").read_text())["AcquisitionParameters"]
    assert record["T1"] == {"RepetitionTime": 0.45, "EchoTime": 0.0098, "InversionTime": None}
    assert record["FLAIR"]["InversionTime"] == 2.5
