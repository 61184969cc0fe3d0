#!/usr/bin/env python
"""Time and peak memory of simulating one phantom subject at 1 mm and 2 mm (3 T, tumour, skull).

Each resolution runs in a fresh child process (2 threads) that loads the packaged atlas, simulates
one subject in memory and writes it as BIDS to a temporary folder; the child reports the time of
each step and the peak RSS is read with getrusage(RUSAGE_CHILDREN).ru_maxrss.

Usage: .venv/bin/python benchmarks/phantom.py  ->  benchmarks/results/phantom.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import run_measured, write_result  # noqa: E402

RESOLUTIONS_MM = (1.0, 2.0)

CHILD = r"""
import json, os, resource, sys, tempfile, time
from pathlib import Path

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

t0, c0 = time.perf_counter(), cpu()
from mrsynth_cli.phantom import simulate_subject, subject_rng, write_subject
from mrsynth_cli.phantom.anatomy import load_atlas
t1, c1 = time.perf_counter(), cpu()
load_atlas()
t2, c2 = time.perf_counter(), cpu()
subject = simulate_subject(subject_rng(0, 0), float(sys.argv[1]), "tumour", 3.0, True)
t3, c3 = time.perf_counter(), cpu()
with tempfile.TemporaryDirectory() as tmp:
    folder = write_subject(subject, Path(tmp), "01")
    t4, c4 = time.perf_counter(), cpu()
    size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
print(json.dumps({
    "shape": list(subject.shape),
    "import_s": round(t1 - t0, 3),
    "atlas_s": round(t2 - t1, 3),
    "simulate_s": round(t3 - t2, 3),
    "write_s": round(t4 - t3, 3),
    "atlas_cpu_s": round(c2 - c1, 3),
    "simulate_cpu_s": round(c3 - c2, 3),
    "write_cpu_s": round(c4 - c3, 3),
    "output_mib": round(size / 2**20, 1),
    "load_average_1min_at_end": round(os.getloadavg()[0], 2),
}))
"""


def main() -> None:
    results = []
    for resolution in RESOLUTIONS_MM:
        run = run_measured([sys.executable, "-c", CHILD, str(resolution)], threads=2)
        if run["rc"] != 0:
            raise SystemExit(f"child failed at {resolution} mm:\n{run['stderr']}")
        child = json.loads(run["stdout"].strip().splitlines()[-1])
        entry = {
            "resolution_mm": resolution,
            **child,
            "per_subject_s": round(child["atlas_s"] + child["simulate_s"] + child["write_s"], 3),
            "process_wall_s": run["seconds"],
            "peak_rss_gib": run["peak_rss_gib"],
        }
        print(entry)
        results.append(entry)
    path = write_result(
        "phantom",
        {
            "what": "one subject, 3 T, tumour, skull; per_subject_s = atlas load + simulation + BIDS write "
            "(wall clock); *_cpu_s = user + system CPU seconds of the child (the write uses up to 4 threads). "
            "Wall times are inflated when the machine is shared: compare load_average_1min_at_end with cpus.",
            "threads": 2,
            "subjects": results,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
