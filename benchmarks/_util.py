"""Helpers for benchmark scripts: run a command in a child process, time it, read its peak RSS."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL = Path(os.environ.get("MRSYNTH_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


def run_measured(args: list[str], threads: int = 2, env: dict[str, str] | None = None) -> dict:
    """Run ``args`` once in a fresh child; wall seconds and the child's peak RSS (GiB)."""
    child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(env or {})}
    code = (
        "import resource, subprocess, sys, json;"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "print(json.dumps({'rc': p.returncode, 'maxrss_kib': r, 'stderr': p.stderr[-2000:], 'stdout': p.stdout[-2000:]}))"
    )
    started = time.perf_counter()
    out = subprocess.run(["python3", "-c", code, *args], capture_output=True, text=True, env=child_env, check=True)
    seconds = time.perf_counter() - started
    info = json.loads(out.stdout)
    return {"seconds": round(seconds, 3), "peak_rss_gib": round(info["maxrss_kib"] / 2**20, 3), "rc": info["rc"],
            "stderr": info["stderr"], "stdout": info["stdout"]}



def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, **data}, indent=2) + "\n")
    return path
