"""``mrsynth batch`` throughput on the shared real subjects, 2 CPU threads.

The five real subjects with a FLAIR (BraTS, two open_ms_mni patients, TCGA-DU-7294 and the C-STAR
example) are linked as plain subject folders; ``mrsynth batch`` synthesizes FLAIR for each from
all its other contrasts with the shipped ``unet-flair`` (loaded once). Reported: wall time, peak
RSS, subjects per minute, and the per-subject seconds from the run report (registration
included). With ``--parts 2`` the same subjects are split over two concurrent processes of one
thread each (``--part 1/2`` and ``2/2``), as two SLURM array tasks would.

Usage: python benchmarks/batch_throughput.py   ->  benchmarks/results/batch_throughput.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL, REPO, run_measured, write_result  # noqa: E402

SUBJECTS = {
    "brats": REAL / "brats_gli_00001_000",
    "patient07": REAL / "open_ms_mni" / "patient07",
    "patient19": REAL / "open_ms_mni" / "patient19",
    "tcga": REAL / "tcga_du_7294" / "brainles_raw_bet",
    "cstar": REPO / "examples" / "cstar_stroke",
}


def _link_subjects(root: Path) -> int:
    """One plain subject folder per subject (symlinks to the read-only real data)."""
    root.mkdir(parents=True)
    present = {name: folder for name, folder in SUBJECTS.items() if folder.is_dir()}
    for name, folder in present.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    return len(present)


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="mrsynth-batch-") as tmp:
        data = Path(tmp) / "subjects"
        n = _link_subjects(data)
        base = [str(REPO / ".venv" / "bin" / "mrsynth"), "batch", str(data)]
        out = Path(tmp) / "out1"
        run = run_measured([*base, str(out), "--target", "flair", "--device", "cpu"], threads=2)
        report = json.loads(sorted((out / "derivatives" / "mrsynth" / "logs").glob("run-*_report.json"))[-1].read_text())
        results["one_process_2_threads"] = {
            "subjects": n, "exit": run["rc"], "seconds": run["seconds"], "peak_rss_gib": run["peak_rss_gib"],
            "subjects_per_minute": round(n / run["seconds"] * 60, 2),
            "per_subject_seconds": {s["subject"]: s["seconds"] for s in report["subjects"]},
            "statuses": {s["subject"]: s["status"] for s in report["subjects"]},
            "models_loaded": report.get("models_loaded"),
        }
        print(results, flush=True)
    path = write_result("batch_throughput", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
