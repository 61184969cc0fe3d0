"""``mrsynth batch`` for real: a tiny trained unet over a small BIDS dataset with one broken subject."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mrsynth_cli.batch import CLAIM_FILE, bids_output_name, derivatives_root, parse_part
from mrsynth_cli.cli.app import app, expand_multi_value_options
from mrsynth_cli.errors import InputError
from mrsynth_cli.io.contrasts import Contrast
from tests.conftest import write_nifti
from tests.engine_fixtures import AFFINE, head, make_subjects

runner = CliRunner()


def invoke(*args: str, env: dict[str, str]):
    return runner.invoke(app, expand_multi_value_options(list(args)), env={"MRSYNTH_DEBUG": "0", **env})


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """A tiny T1+T2 -> FLAIR unet trained for real and imported (seconds)."""
    root = tmp_path_factory.mktemp("batch")
    make_subjects(root / "train", n=2)
    env = {"MRSYNTH_HOME": str(root / "home")}
    run = root / "run"
    trained = invoke("train", "unet", "--data", str(root / "train"), "--target", "flair", "--inputs", "t1", "t2",
                     "--out", str(run), "--max-steps", "10", "--batch-size", "2", "--channels", "8,16", "--spacing",
                     "4", "--size", "16,16,16", "--device", "cpu", env=env)
    assert trained.exit_code == 0, trained.output
    assert invoke("weights", "import", str(run / "checkpoint"), "--name", "tiny", env=env).exit_code == 0
    return {"root": root, "env": env}


def _bids(root: Path) -> Path:
    """sub-01 (one session), sub-02 (two sessions), sub-03 with a corrupt T2."""
    for sub, sessions in (("01", [None]), ("02", ["a", "b"]), ("03", [None])):
        for index, ses in enumerate(sessions):
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            folder.mkdir(parents=True)
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            images = head(int(sub) * 10 + index)
            write_nifti(folder / f"{stem}_T1w.nii.gz", images["T1"], AFFINE)
            if sub == "03":
                (folder / f"{stem}_T2w.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
            else:
                write_nifti(folder / f"{stem}_T2w.nii.gz", images["T2"], AFFINE)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    return root


def _report(out: Path) -> dict:
    reports = sorted((out / "derivatives" / "mrsynth" / "logs").glob("run-*_report.json"))
    return json.loads(reports[-1].read_text())


def test_bids_dataset_isolated_failure_then_skip_existing(model, tmp_path: Path) -> None:
    bids = _bids(tmp_path / "bids")
    out = tmp_path / "out"
    args = ["batch", str(bids), str(out), "participant", "--target", "flair", "--model", "tiny", "--device", "cpu"]
    first = invoke(*args, "--qc", env=model["env"])
    assert first.exit_code == 1, first.output  # sub-03 failed, after the others finished
    derivatives = out / "derivatives" / "mrsynth"
    written = sorted(p.relative_to(derivatives).as_posix() for p in derivatives.glob("sub-*/**/*.nii.gz"))
    assert written == [
        "sub-01/anat/sub-01_desc-synth_FLAIR.nii.gz",
        "sub-02/ses-a/anat/sub-02_ses-a_desc-synth_FLAIR.nii.gz",
        "sub-02/ses-b/anat/sub-02_ses-b_desc-synth_FLAIR.nii.gz",
    ]
    # On the input grid, labelled synthetic, sidecar with BIDS-relative sources only.
    image = nib.load(str(derivatives / written[0]))
    np.testing.assert_allclose(image.affine, AFFINE)
    assert b"SYNTHETIC" in image.header["descrip"].tobytes()
    sidecar = json.loads((derivatives / written[0].replace(".nii.gz", ".json")).read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz", "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "mrsynth"
    report = _report(out)
    status = {(s["subject"], s["session"]): s["status"] for s in report["subjects"]}
    assert status == {("01", None): "ok", ("02", "a"): "ok", ("02", "b"): "ok", ("03", None): "failed"}
    failed = next(s for s in report["subjects"] if s["status"] == "failed")
    assert "sub-03_T2w.nii.gz" in failed["error"] and "\n" not in failed["error"]
    assert report["models_loaded"] == 1 and report["state"] == "finished"
    index = (derivatives / report["qc_index"]).read_text()
    assert index.count("sub-0") >= 4 and "failed" in index
    assert len(list((derivatives / "qc").glob("*_qc.html"))) == 3
    assert (derivatives / "logs").glob("sub-01_*.log")
    assert not list(derivatives.rglob(CLAIM_FILE))  # claims are released
    assert "Traceback" not in first.output

    # Rerun: done subjects are skipped untouched, the broken one fails again.
    before = (derivatives / written[0]).stat().st_mtime_ns
    second = invoke(*args, "--skip-existing", env=model["env"])
    assert second.exit_code == 1
    assert (derivatives / written[0]).stat().st_mtime_ns == before
    status = {(s["subject"], s["session"]): s["status"] for s in _report(out)["subjects"]}
    assert status[("01", None)] == "skipped" and status[("03", None)] == "failed"

    # Without --skip-existing or --force an existing output is a failure, not an overwrite.
    third = invoke(*args, "--participant-label", "01", env=model["env"])
    assert third.exit_code == 1 and "--force" in json.dumps(_report(out))
    assert (derivatives / written[0]).stat().st_mtime_ns == before


def test_fail_fast_and_parts(model, tmp_path: Path) -> None:
    bids = _bids(tmp_path / "bids")
    common = ["--target", "flair", "--model", "tiny", "--device", "cpu"]
    out = tmp_path / "ff"
    result = invoke("batch", str(bids), str(out), "--participant-label", "03", "01", "--fail-fast", *common,
                    env=model["env"])
    assert result.exit_code == 1
    status = {s["subject"]: s["status"] for s in _report(out)["subjects"]}
    assert status == {"01": "not-run", "03": "failed"} or status == {"01": "ok", "03": "failed"}
    # Sorted order puts sub-01 first, so fail-fast only matters after sub-03; check the order too.
    assert [s["subject"] for s in _report(out)["subjects"]] == ["01", "03"]

    seen = []
    for part in ("1/2", "2/2"):
        out = tmp_path / f"part{part[0]}"
        invoke("batch", str(bids), str(out), "--part", part, *common, env=model["env"])
        seen.append({(s["subject"], s["session"]) for s in _report(out)["subjects"]})
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 4


def test_live_claim_is_respected_and_dead_claim_taken_over(model, tmp_path: Path) -> None:
    bids = _bids(tmp_path / "bids")
    out = tmp_path / "out"
    folder = derivatives_root(out) / "sub-01" / "anat"
    folder.mkdir(parents=True)
    import socket

    (folder / CLAIM_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    common = ["batch", str(bids), str(out), "--participant-label", "01", "--target", "flair", "--model", "tiny"]
    result = invoke(*common, env=model["env"])
    assert result.exit_code == 0 and "another run" in result.output
    assert not list(folder.glob("*.nii.gz"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / CLAIM_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    result = invoke(*common, env=model["env"])
    assert result.exit_code == 0, result.output
    assert list(folder.glob("*.nii.gz")) and not (folder / CLAIM_FILE).exists()


def test_plain_folders_and_names() -> None:
    assert bids_output_name("01", None, Contrast.T1CE).as_posix() == \
        "sub-01/anat/sub-01_ce-gadolinium_desc-synth_T1w.nii.gz"
    assert bids_output_name("p7", "2", Contrast.FLAIR).as_posix() == "sub-p7/ses-2/anat/sub-p7_ses-2_desc-synth_FLAIR.nii.gz"
    assert derivatives_root(Path("/x/derivatives/mrsynth")) == Path("/x/derivatives/mrsynth")
    assert derivatives_root(Path("/x/out")) == Path("/x/out/derivatives/mrsynth")
    assert parse_part("2/8") == (2, 8)
    assert parse_part(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}) == (4, 4)
    assert parse_part(None, {}) == (1, 1)
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(InputError):
            parse_part(bad)


def test_plain_subject_folders(model, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    for name in ("patient_07", "patient-19"):
        folder = plain / name
        folder.mkdir(parents=True)
        images = head(7)
        write_nifti(folder / "T1.nii.gz", images["T1"], AFFINE)
        write_nifti(folder / "T2.nii.gz", images["T2"], AFFINE)
    out = tmp_path / "out"
    result = invoke("batch", str(plain), str(out), "--target", "flair", "--model", "tiny", env=model["env"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (out / "derivatives" / "mrsynth").rglob("*.nii.gz"))
    assert names == ["sub-patient07_desc-synth_FLAIR.nii.gz", "sub-patient19_desc-synth_FLAIR.nii.gz"]


def test_synthesize_and_batch_never_touch_the_network(model, tmp_path: Path) -> None:
    """Every socket connection is refused (and recorded) in the child; the commands still work."""
    site = tmp_path / "site"
    site.mkdir()
    attempts = tmp_path / "attempts.txt"
    (site / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(self, address, *a, **k):\n"
        f"    open({str(attempts)!r}, 'a').write(repr(address) + '\\n')\n"
        "    raise OSError('network disabled by the test')\n"
        "socket.socket.connect = _refuse\nsocket.socket.connect_ex = _refuse\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, **model["env"], "PYTHONPATH": os.pathsep.join([str(site), str(repo)]), "MRSYNTH_DEBUG": "0"}
    bids = _bids(tmp_path / "bids")
    t1, t2 = bids / "sub-01/anat/sub-01_T1w.nii.gz", bids / "sub-01/anat/sub-01_T2w.nii.gz"
    for args in (["synthesize", "--in", f"t1={t1}", f"t2={t2}", "--target", "flair", "--model", "tiny", "--out",
                  str(tmp_path / "F.nii.gz")],
                 ["batch", str(bids), str(tmp_path / "out"), "--participant-label", "01", "--target", "flair",
                  "--model", "tiny", "--qc"]):
        result = subprocess.run([sys.executable, "-m", "mrsynth_cli", *args], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    assert not attempts.exists(), attempts.read_text()
