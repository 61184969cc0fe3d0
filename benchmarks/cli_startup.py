"""How fast ``mrsynth --help`` and ``mrsynth --version`` answer (torch/monai are imported lazily).

Usage: python benchmarks/cli_startup.py  ->  benchmarks/results/cli_startup.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, run_measured, write_result  # noqa: E402

MRSYNTH = str(REPO / ".venv" / "bin" / "mrsynth")


def main() -> None:
    results = {}
    for args in (["--help"], ["--version"], ["synthesize", "--help"]):
        runs = [run_measured([MRSYNTH, *args]) for _ in range(5)]
        assert all(r["rc"] == 0 for r in runs), runs
        results[" ".join(args)] = {
            "median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        }
    print(results)
    print(write_result("cli_startup", {"runs": 5, "commands": results}))


if __name__ == "__main__":
    main()
