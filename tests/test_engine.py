"""End to end through the real engine: train a tiny unet, import it, synthesize, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.io.volume import SYNTHETIC_DESCRIP_PREFIX
from tests.engine_fixtures import make_subjects

runner = CliRunner()


def invoke(*args: str, env: dict[str, str]):
    return runner.invoke(app, expand_multi_value_options(list(args)), env={"MRSYNTH_DEBUG": "0", **env})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny unet trained for real on tiny subjects (T1+T2 -> FLAIR), imported into a weights folder."""
    root = tmp_path_factory.mktemp("engine")
    data = root / "data"
    make_subjects(data, n=3)
    env = {"MRSYNTH_HOME": str(root / "home")}
    run = root / "run"
    result = invoke(
        "train", "unet", "--data", str(data), "--target", "flair", "--inputs", "t1", "t2", "--out", str(run),
        "--max-steps", "40", "--batch-size", "4", "--channels", "8,16", "--spacing", "4", "--size", "16,16,16",
        "--validation-subject", "subj02", "--validate-every", "20", "--checkpoint-every", "20", "--device", "cpu",
        env=env,
    )
    assert result.exit_code == 0, result.output
    imported = invoke("weights", "import", str(run / "checkpoint"), "--name", "tiny-flair", env=env)
    assert imported.exit_code == 0, imported.output
    return {"root": root, "data": data, "env": env, "run": run}


def test_training_logged_validation_and_checkpoint(trained) -> None:
    log = [json.loads(line) for line in (trained["run"] / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    validations = [r["validation"] for r in log if "validation" in r]
    assert len(validations) == 2 and validations[-1]["ssim"] > validations[0]["ssim"]
    config = json.loads((trained["run"] / "checkpoint" / "config.json").read_text())
    assert config["family"] == "unet" and config["config"]["target"] == "FLAIR" and config["step"] == 40


def test_weights_list_and_verify(trained) -> None:
    listed = invoke("weights", "list", "--json", env=trained["env"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.output)}
    assert rows["tiny-flair"]["inputs"] == ["T1", "T2"] and rows["tiny-flair"]["outputs"] == ["FLAIR"]
    assert rows["tiny-flair"]["present"] and rows["tiny-flair"]["metrics"]["step"] == 40
    assert invoke("weights", "verify", "tiny-flair", env=trained["env"]).exit_code == 0


def _synth(trained, out: Path, *extra: str):
    subj = trained["data"] / "subj02"
    return invoke(
        "synthesize", "--in", f"t1={subj / 'T1.nii.gz'}", f"t2={subj / 'T2.nii.gz'}", "--target", "flair",
        "--out", str(out), "--model", "tiny-flair", "--device", "cpu", *extra, env=trained["env"],
    )


def test_synthesize_writes_on_the_input_grid_with_sidecar(trained, tmp_path: Path) -> None:
    out = tmp_path / "FLAIR_synth.nii.gz"
    result = _synth(trained, out)
    assert result.exit_code == 0, result.output
    source = nib.load(str(trained["data"] / "subj02" / "T1.nii.gz"))
    image = nib.load(str(out))
    assert image.shape == source.shape
    np.testing.assert_array_equal(image.affine, source.affine)
    assert int(image.header["sform_code"]) == int(source.header["sform_code"])
    assert image.header["descrip"].tobytes().decode().startswith(SYNTHETIC_DESCRIP_PREFIX)
    sidecar = json.loads(out.with_name("FLAIR_synth.json").read_text())
    assert sidecar["Synthetic"] is True and sidecar["Model"]["Name"] == "tiny-flair"
    assert len(sidecar["Model"]["Files"][0]["sha256"]) == 64 and sidecar["Seed"] == 0
    data = image.get_fdata()
    assert data.max() > 0 and np.all(data[source.get_fdata() == 0] == 0)


def test_synthesize_qc_and_report_with_reference(trained, tmp_path: Path) -> None:
    """--qc writes the montage and page after the output; mrsynth report adds metrics from the sidecar."""
    out = tmp_path / "FLAIR_synth.nii.gz"
    result = _synth(trained, out, "--qc")
    assert result.exit_code == 0, result.output
    page, png = tmp_path / "FLAIR_synth_qc.html", tmp_path / "FLAIR_synth_qc.png"
    assert out.is_file() and page.is_file() and png.is_file() and "wrote QC report" in result.output
    sidecar = json.loads(out.with_name("FLAIR_synth.json").read_text())
    assert sidecar["Target"] == "FLAIR" and sidecar["SourceContrasts"] == ["T1", "T2"]
    text = page.read_text()
    assert "SYNTHETIC" in text and "tiny-flair" in text and sidecar["Model"]["Files"][0]["sha256"] in text
    assert "No reference was given" in text and str(trained["data"]) not in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # a report file in the way is refused before any work
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "o_qc.html").write_text("keep")
    refused = _synth(trained, blocked / "o.nii.gz", "--qc")
    assert refused.exit_code == 2 and "o_qc.html already exists" in refused.output
    assert not (blocked / "o.nii.gz").exists()
    # the report command finds the inputs through the sidecar and scores against the acquired FLAIR
    reported = invoke("report", str(out), "--ref", str(trained["data"] / "subj02" / "FLAIR.nii.gz"),
                      "--out-dir", str(tmp_path / "qc"), env=trained["env"])
    assert reported.exit_code == 0, reported.output
    text = (tmp_path / "qc" / "FLAIR_synth_qc.html").read_text()
    assert "PSNR (dB)" in text and ">T2<" in text and "|synth - ref|" in text


def test_same_seed_same_bytes(trained, tmp_path: Path) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert _synth(trained, a).exit_code == 0 and _synth(trained, b).exit_code == 0
    assert nib.load(str(a)).get_fdata().tobytes() == nib.load(str(b)).get_fdata().tobytes()


def test_existing_output_refused(trained, tmp_path: Path) -> None:
    out = tmp_path / "exists.nii.gz"
    out.write_bytes(b"keep")
    result = _synth(trained, out)
    assert result.exit_code == 2 and "already exists" in result.output and out.read_bytes() == b"keep"


def test_tampered_weights_refused_and_nothing_written(trained, tmp_path: Path) -> None:
    weights = Path(trained["env"]["MRSYNTH_HOME"]) / "weights" / "tiny-flair" / "model.safetensors"
    original = weights.read_bytes()
    try:
        tampered = bytearray(original)
        tampered[-1] ^= 0xFF
        weights.write_bytes(bytes(tampered))
        out = tmp_path / "o.nii.gz"
        result = _synth(trained, out)
        assert result.exit_code == 2, result.output
        assert "does not match its manifest sha256" in result.output and len(result.output.strip().splitlines()) == 1
        assert not out.exists() and list(tmp_path.iterdir()) == []
        assert invoke("weights", "verify", "tiny-flair", env=trained["env"]).exit_code == 2
    finally:
        weights.write_bytes(original)


def test_routing_errors_list_capabilities(trained, tmp_path: Path) -> None:
    subj = trained["data"] / "subj02"
    result = invoke("synthesize", "--in", f"t1={subj / 'T1.nii.gz'}", "--target", "pd", "--out", str(tmp_path / "x.nii.gz"),
                    env=trained["env"])
    assert result.exit_code == 2 and "no installed model makes PD" in result.output and "tiny-flair" in result.output
    result = invoke("synthesize", "--in", f"t1={subj / 'T1.nii.gz'}", "--target", "flair", "--model", "tiny-flare",
                    "--out", str(tmp_path / "x.nii.gz"), env=trained["env"])
    assert result.exit_code == 2 and "did you mean 'tiny-flair'" in result.output
    assert not (tmp_path / "x.nii.gz").exists()


def test_missing_device_is_an_error(trained, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = _synth(trained, tmp_path / "o.nii.gz", "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA GPU" in result.output


def test_rerun_without_resume_is_refused(trained, tmp_path: Path) -> None:
    common = ["train", "unet", "--data", str(trained["data"]), "--target", "flair", "--inputs", "t1", "t2",
              "--batch-size", "2", "--channels", "8,16", "--spacing", "4", "--size", "16,16,16", "--device", "cpu"]
    run = tmp_path / "run"
    assert invoke(*common, "--out", str(run), "--max-steps", "2", env=trained["env"]).exit_code == 0
    again = invoke(*common, "--out", str(run), "--max-steps", "2", env=trained["env"])
    assert again.exit_code == 2 and "--resume" in again.output


def test_interrupted_run_resumes_identically(tmp_path: Path) -> None:
    """Interrupted after its step-10 checkpoint, then resumed: same weights as an uninterrupted run."""
    import torch

    from mrsynth_cli.training.loop import TrainSettings, train_loop

    settings = TrainSettings(max_steps=20, checkpoint_every=10, seed=3, device="cpu", learning_rate=0.05)

    def make_batch(fail_at: int | None):
        calls = {"n": 0}

        def sample_batch(rng):
            calls["n"] += 1
            if fail_at is not None and calls["n"] == fail_at:
                raise KeyboardInterrupt
            return torch.from_numpy(rng.standard_normal((8, 4)).astype(np.float32))

        return sample_batch

    def loss(network, batch, generator):
        noise = torch.randn(batch.shape, generator=generator)
        return ((network(batch + 0.1 * noise) - batch.sum(1, keepdim=True)) ** 2).mean()

    def run(out: Path, fail_at: int | None, resume: bool) -> Path:
        torch.manual_seed(0)
        return train_loop(family="test", config={"k": 1}, network=torch.nn.Linear(4, 1), sample_batch=make_batch(fail_at),
                          compute_loss=loss, out_dir=out, settings=settings, resume=resume)

    straight = run(tmp_path / "straight", None, False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", 15, False)
    resumed = run(tmp_path / "split", None, True)
    from safetensors.torch import load_file

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crafted_pickle_in_checkpoint_is_not_executed(trained, tmp_path: Path) -> None:
    import pickle

    run = tmp_path / "run"
    ckpt = run / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text((trained["run"] / "checkpoint" / "config.json").read_text())
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (ckpt / "train_state.pt").write_bytes(pickle.dumps(Payload()))
    config = json.loads((ckpt / "config.json").read_text())["config"]
    result = invoke("train", "unet", "--data", str(trained["data"]), "--target", "flair", "--inputs", "t1", "t2",
                    "--out", str(run), "--resume", "--batch-size", str(config["batch_size"]), "--channels", "8,16",
                    "--spacing", "4", "--size", "16,16,16", "--device", "cpu", "--max-steps", "41", env=trained["env"])
    assert result.exit_code == 2 and "not a plain checkpoint" in result.output
    assert not marker.exists()
