"""Fault injection: run each fault N times and count what survived and what was lost.

Faults (each against the real CLI in child processes):

* ``sigint_synthesize`` / ``sigterm_synthesize``: Ctrl-C or SIGTERM at a random moment of a real
  synthesis (shipped ``unet-flair`` on the bundled C-STAR subject). Survived when the exit code is
  130 and the output folder holds no file at all (no partial NIfTI, no sidecar, no temporary file).
* ``sigterm_batch``: SIGTERM during ``mrsynth batch`` over three subjects. Survived when finished
  subjects' outputs are complete and valid, no partial file or claim file is left, and the run
  report says ``interrupted``; then ``--skip-existing`` completes the rest.
* ``kill9_training``: ``kill -9`` at a random moment of ``mrsynth train unet``; then ``--resume``.
  Survived when the resumed run's final weights equal an uninterrupted run's bit for bit (same
  optimizer and generator state), i.e. only the steps since the last checkpoint were redone.
* ``truncated_weights`` / ``pickle_weights``: the model file truncated, or replaced by a pickle
  whose payload would create a marker file. Survived when synthesize exits 2 with one line, writes
  nothing, and the payload never ran.
* ``concurrent_batch``: two ``mrsynth batch`` runs on one output folder at once. Survived when every
  subject is written exactly once, every output is a valid NIfTI and no claim is left.
* ``readonly_cache``: the weights folder (MRSYNTH_HOME with an imported model) made read-only; as
  root, which ignores permissions, the run drops to user ``nobody``. Survived when synthesize works.
* ``no_network``: synthesize with every socket connection refused (a ``sitecustomize`` that makes
  ``socket.connect`` raise and records attempts). Survived when it works and nothing tried to connect.

Usage: python benchmarks/faults.py [--repeats 3]   ->  benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, RESULTS, write_result  # noqa: E402

MRSYNTH = [sys.executable, "-m", "mrsynth_cli"]
EXAMPLE = REPO / "examples" / "cstar_stroke"
SYNTH_ARGS = ["synthesize", "--in", f"t1={EXAMPLE / 'T1.nii.gz'}", f"t2={EXAMPLE / 'T2.nii.gz'}", "--target", "flair"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MRSYNTH_HOME": str(home), "OMP_NUM_THREADS": "2", "MRSYNTH_DEBUG": "0", **extra}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _valid_nifti(path: Path) -> bool:
    try:
        nib.load(str(path)).get_fdata()
        return True
    except Exception:
        return False


def _signal_during(command: list[str], env: dict, sig: int, after_s: float) -> tuple[int, str]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    if process.poll() is None:
        process.send_signal(sig)
    out, err = process.communicate(timeout=300)
    return process.returncode, err


def fault_signal_synthesize(work: Path, rng: random.Random, sig: int) -> dict:
    out_dir = work / "out"
    out_dir.mkdir(parents=True)
    after = rng.uniform(3.0, 25.0)
    code, err = _signal_during([*MRSYNTH, *SYNTH_ARGS, "--out", str(out_dir / "FLAIR.nii.gz")], _env(work / "home"),
                               sig, after)
    left = _files(out_dir)
    # Either nothing at all, or (the signal came as the run ended) both files complete.
    complete = {p.name for p in left} == {"FLAIR.nii.gz", "FLAIR.json"} and _valid_nifti(out_dir / "FLAIR.nii.gz")
    if complete:
        try:
            json.loads((out_dir / "FLAIR.json").read_text())
        except ValueError:
            complete = False
    survived = complete or (code == 130 and not left)
    return {"after_s": round(after, 1), "exit": code, "left": [p.name for p in left], "survived": survived,
            "lost": 0 if survived else 1, "message": err.strip().splitlines()[-1:] }


def _bids(root: Path, n: int = 3) -> Path:
    for i in range(n):
        anat = root / f"sub-{i + 1:02d}" / "anat"
        anat.mkdir(parents=True)
        for name, contrast in (("T1", "T1w"), ("T2", "T2w")):
            shutil.copy(EXAMPLE / f"{name}.nii.gz", anat / f"sub-{i + 1:02d}_{contrast}.nii.gz")
    return root


def fault_sigterm_batch(work: Path, rng: random.Random) -> dict:
    bids = _bids(work / "bids")
    out = work / "out"
    command = [*MRSYNTH, "batch", str(bids), str(out), "--target", "flair", "--device", "cpu"]
    after = rng.uniform(20.0, 70.0)
    code, err = _signal_during(command, _env(work / "home"), signal.SIGTERM, after)
    derivatives = out / "derivatives" / "mrsynth"
    niftis = [p for p in _files(derivatives) if p.name.endswith(".nii.gz")]
    junk = [p.name for p in _files(derivatives) if p.name.startswith(".")]
    reports = sorted((derivatives / "logs").glob("run-*_report.json"))
    state = json.loads(reports[-1].read_text())["state"] if reports else None
    clean = all(_valid_nifti(p) for p in niftis) and not junk and state in ("interrupted", "finished")
    resumed = subprocess.run([*command, "--skip-existing"], env=_env(work / "home"), capture_output=True, text=True)
    complete = len([p for p in _files(derivatives) if p.name.endswith(".nii.gz")]) == 3
    survived = clean and resumed.returncode == 0 and complete
    return {"after_s": round(after, 1), "exit": code, "outputs_before_resume": len(niftis), "junk": junk,
            "report_state": state, "resume_exit": resumed.returncode, "survived": survived, "lost": 0 if survived else 1}


TRAIN = ["train", "unet", "--target", "flair", "--inputs", "t1", "t2", "--max-steps", "60", "--batch-size", "4",
         "--channels", "8,16,32", "--spacing", "4", "--size", "48,48,48", "--device", "cpu", "--checkpoint-every", "10"]


def fault_kill9_training(work: Path, rng: random.Random, reference: Path) -> dict:
    from safetensors.torch import load_file

    run = work / "run"
    command = [*MRSYNTH, *TRAIN, "--data", str(work.parent / "train-data"), "--out", str(run)]
    after = rng.uniform(8.0, 25.0)
    env = _env(work.parent / "train-home")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    killed = process.poll() is None
    if killed:
        process.kill()
    process.wait()
    step_at_kill = json.loads((run / "checkpoint" / "config.json").read_text())["step"] if (
        run / "checkpoint" / "config.json").exists() else 0
    resume = ["--resume"] if step_at_kill else []
    done = subprocess.run([*command, *resume], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"after_s": round(after, 1), "survived": False, "lost": 1, "error": done.stderr[-300:]}
    a = load_file(str(run / "checkpoint" / "model.safetensors"))
    b = load_file(str(reference / "checkpoint" / "model.safetensors"))
    identical = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    return {"after_s": round(after, 1), "killed_mid_run": killed, "checkpoint_step_at_kill": step_at_kill,
            "identical_to_uninterrupted": identical, "survived": identical, "lost": 0 if identical else 1}


def _imported_home(work: Path, reference: Path) -> tuple[Path, Path]:
    """A fresh MRSYNTH_HOME with the tiny reference checkpoint imported as model "tiny"."""
    home = work / "home"
    subprocess.run([*MRSYNTH, "weights", "import", str(reference / "checkpoint"), "--name", "tiny"], env=_env(home),
                   check=True, capture_output=True)
    files = sorted((home).rglob("model.safetensors"))
    assert len(files) == 1, files
    return home, files[0]


TINY_SYNTH = ["synthesize", "--in", f"t1={EXAMPLE / 'T1.nii.gz'}", f"t2={EXAMPLE / 'T2.nii.gz'}", "--target", "flair",
              "--model", "tiny", "--registration", "none"]


def fault_bad_weights(work: Path, rng: random.Random, kind: str, reference: Path) -> dict:
    home, target = _imported_home(work, reference)
    marker = work / "payload-ran"
    if kind == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[: rng.randint(100, len(data) - 1)])
    else:
        payload = f"import pickle, os\nclass P:\n    def __reduce__(self):\n        return (os.system, ('touch {marker}',))\n"
        code = payload + f"open({str(target)!r}, 'wb').write(pickle.dumps(P()))\n"
        subprocess.run([sys.executable, "-c", code], check=True)
    out_dir = work / "out"
    out_dir.mkdir()
    result = subprocess.run([*MRSYNTH, *TINY_SYNTH, "--out", str(out_dir / "F.nii.gz")], env=_env(home),
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    survived = result.returncode == 2 and len(lines) == 1 and not _files(out_dir) and not marker.exists()
    return {"exit": result.returncode, "message": lines[-1:] if lines else [], "payload_ran": marker.exists(),
            "survived": survived, "lost": 0 if survived else 1}


def fault_concurrent_batch(work: Path, rng: random.Random) -> dict:
    bids = _bids(work / "bids")
    out = work / "out"
    command = [*MRSYNTH, "batch", str(bids), str(out), "--target", "flair", "--device", "cpu", "--skip-existing"]
    env = _env(work / "home", OMP_NUM_THREADS="1")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(0.0, 3.0))
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=900) for p in (first, second)]
    derivatives = out / "derivatives" / "mrsynth"
    niftis = [p for p in _files(derivatives) if p.name.endswith(".nii.gz")]
    junk = [p.name for p in _files(derivatives) if p.name.startswith(".")]
    processed = sum(o[0].count(": ok") for o in outs)
    survived = len(niftis) == 3 and all(_valid_nifti(p) for p in niftis) and not junk and processed == 3
    return {"exits": [first.returncode, second.returncode], "outputs": len(niftis), "subjects_processed": processed,
            "junk": junk, "survived": survived, "lost": 0 if survived else 1}


def fault_readonly_cache(work: Path, rng: random.Random, reference: Path) -> dict:
    """The weights cache read-only; as root (which ignores permissions) the run drops to user nobody."""
    home, _ = _imported_home(work, reference)
    for path in [home, *home.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    out_dir = work / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    prefix = []
    if os.geteuid() == 0 and shutil.which("setpriv"):
        prefix = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    result = subprocess.run([*prefix, *MRSYNTH, *TINY_SYNTH, "--out", str(out_dir / "F.nii.gz")],
                            env=_env(home, HOME=str(work)), capture_output=True, text=True)
    for path in [home, *home.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    survived = result.returncode == 0 and _valid_nifti(out_dir / "F.nii.gz")
    return {"exit": result.returncode, "as_user": "nobody" if prefix else "self", "survived": survived,
            "lost": 0 if survived else 1, "message": result.stderr.strip().splitlines()[-1:]}


def fault_no_network(work: Path, rng: random.Random) -> dict:
    site = work / "site"
    site.mkdir()
    log = work / "connect-attempts.txt"
    (site / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(self, address, *a, **k):\n"
        f"    open({str(log)!r}, 'a').write(repr(address) + '\\n')\n"
        "    raise OSError('network disabled by the fault test')\n"
        "socket.socket.connect = _refuse\nsocket.socket.connect_ex = _refuse\n"
    )
    out_dir = work / "out"
    env = _env(work / "home", PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([*MRSYNTH, *SYNTH_ARGS, "--out", str(out_dir / "F.nii.gz")], env=env, capture_output=True,
                            text=True)
    attempts = log.read_text().splitlines() if log.exists() else []
    survived = result.returncode == 0 and not attempts
    return {"exit": result.returncode, "connect_attempts": attempts, "survived": survived, "lost": 0 if survived else 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    rng = random.Random(0)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mrsynth-faults-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the read-only-cache fault runs a child as user nobody
        from tests.engine_fixtures import make_subjects  # tiny real training data

        make_subjects(root / "train-data", n=2)
        reference = root / "train-reference"
        subprocess.run([*MRSYNTH, *TRAIN, "--data", str(root / "train-data"), "--out", str(reference)],
                       env=_env(root / "train-home"), check=True, capture_output=True)
        faults = {
            "sigint_synthesize": lambda w: fault_signal_synthesize(w, rng, signal.SIGINT),
            "sigterm_synthesize": lambda w: fault_signal_synthesize(w, rng, signal.SIGTERM),
            "sigterm_batch": lambda w: fault_sigterm_batch(w, rng),
            "kill9_training": lambda w: fault_kill9_training(w, rng, reference),
            "truncated_weights": lambda w: fault_bad_weights(w, rng, "truncated", reference),
            "pickle_weights": lambda w: fault_bad_weights(w, rng, "pickle", reference),
            "concurrent_batch": lambda w: fault_concurrent_batch(w, rng),
            "readonly_cache": lambda w: fault_readonly_cache(w, rng, reference),
            "no_network": lambda w: fault_no_network(w, rng),
        }
        for name, fault in faults.items():
            if args.only and name not in args.only:
                continue
            results[name] = []
            for repeat in range(args.repeats):
                work = root / f"{name}-{repeat}"
                work.mkdir()
                started = time.perf_counter()
                outcome = fault(work)
                outcome["seconds"] = round(time.perf_counter() - started, 1)
                results[name].append(outcome)
                print(name, repeat, outcome, flush=True)
    previous = RESULTS / "faults.json"
    if args.only and previous.exists():  # a partial rerun replaces only the faults it ran
        results = {**json.loads(previous.read_text())["runs"], **results}
    summary = {name: {"runs": len(r), "survived": sum(o["survived"] for o in r), "outputs_lost": sum(o["lost"] for o in r)}
               for name, r in results.items()}
    path = write_result("faults", {"repeats": args.repeats, "summary": summary, "runs": results})
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
