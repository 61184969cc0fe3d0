"""``mrsynth train`` under ``torchrun`` with two CPU processes (gloo), for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrsynth_cli.cli.app import app, expand_multi_value_options
from tests.engine_fixtures import make_subjects

TRAIN = ["train", "unet", "--target", "flair", "--inputs", "t1", "t2", "--batch-size", "2", "--channels", "8,16",
         "--spacing", "4", "--size", "16,16,16", "--device", "cpu", "--checkpoint-every", "3"]


def test_two_process_gloo_training_then_resume_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_subjects(data, n=2)
    run = tmp_path / "run"
    env = {**os.environ, "MRSYNTH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "MRSYNTH_DEBUG": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
               "-m", "mrsynth_cli", *TRAIN, "--data", str(data), "--out", str(run), "--max-steps", "6"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    meta = json.loads((run / "checkpoint" / "config.json").read_text())
    assert meta["step"] == 6
    assert meta["training"]["world_size"] == 2 and meta["training"]["final"] is True
    # Only rank 0 logs: one record per logged step, not two.
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    # Each rank's generator states are kept, so a resume must use the same number of processes.
    resumed = CliRunner().invoke(
        app,
        expand_multi_value_options([*TRAIN, "--data", str(data), "--out", str(run), "--max-steps", "8", "--resume"]),
        env={"MRSYNTH_HOME": str(tmp_path / "home"), "MRSYNTH_DEBUG": "0"},
    )
    assert resumed.exit_code == 2
    assert "2 process(es)" in resumed.output and "same number of processes" in resumed.output


@pytest.mark.parametrize("world", ["2"])
def test_announced_group_without_a_master_is_a_clear_error(tmp_path: Path, world: str) -> None:
    data = tmp_path / "data"
    make_subjects(data, n=2)
    env = {**os.environ, "WORLD_SIZE": world, "RANK": "0", "LOCAL_RANK": "0", "MRSYNTH_DEBUG": "0"}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    result = subprocess.run([sys.executable, "-m", "mrsynth_cli", *TRAIN, "--data", str(data), "--out",
                             str(tmp_path / "run"), "--max-steps", "2"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "torchrun" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


TOY = '''
import os
import sys
from pathlib import Path

import numpy as np
import torch

from mrsynth_cli.training.loop import TrainSettings, train_loop

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
true_w = torch.arange(1.0, 9.0)[:, None]
# The global batch of 16 is two halves of 8, one per rank; one process draws both halves itself.
streams = [np.random.default_rng([7, r]) for r in range(2)]
mine = [streams[rank]] if world == 2 else streams


def sample_batch(rng):
    x = np.concatenate([s.standard_normal((8, 8)) for s in mine]).astype(np.float32)
    x = torch.from_numpy(x)
    return x, x @ true_w


def loss(network, batch, generator):
    x, y = batch
    return ((network(x) - y) ** 2).mean()


torch.manual_seed(0)
settings = TrainSettings(max_steps=40, learning_rate=0.3, log_every=1, checkpoint_every=20, device="cpu",
                         warmup_steps=1, seed=1)
train_loop(family="toy", config={"w": 8}, network=torch.nn.Linear(8, 1), sample_batch=sample_batch,
           compute_loss=loss, out_dir=Path(sys.argv[1]), settings=settings)
'''


def test_two_processes_follow_the_one_process_loss_curve(tmp_path: Path) -> None:
    """Same global batch (16 = 2 x 8 vs 1 x 16): the loss curves agree to float precision."""
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                          "--nproc_per_node", "2", str(script), str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]

    def curve(run: str) -> list[float]:
        records = [json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r]

    a, b = curve("one"), curve("two")
    assert len(a) == len(b) == 40
    assert a[-1] < a[0] / 10  # it learns
    # DDP averages the two half-batch gradients: exactly the full-batch gradient, so the curves match.
    assert max(abs(x - y) / x for x, y in zip(a, b, strict=True)) < 1e-3, (a, b)
