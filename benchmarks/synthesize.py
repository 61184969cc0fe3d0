"""Wall time and peak RSS of ``mrsynth synthesize`` for one 240×240×155 volume on 2 CPU threads.

Uses the shipped ``unet`` FLAIR model on BraTS-GLI-00001-000 (T1+T1ce+T2 -> FLAIR, and T1+T2 -> FLAIR),
end to end in a fresh process (imports, preprocessing, inference, writing). The case is in the
training data of the shipped model, so only time and memory are reported here, not quality
(quality is leave-one-subject-out, in unet_loso.json). Also runs the README demo on C-STAR.

Usage: python benchmarks/synthesize.py  ->  benchmarks/results/synthesize.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL, REPO, run_measured, write_result  # noqa: E402

MRSYNTH = str(REPO / ".venv" / "bin" / "mrsynth")


def main() -> None:
    brats = REAL / "brats_gli_00001_000"
    cases = {
        "brats_240x240x155_t1_t1ce_t2_to_flair": [
            f"t1={brats / 'BraTS-GLI-00001-000-t1n.nii.gz'}", f"t1ce={brats / 'BraTS-GLI-00001-000-t1c.nii.gz'}",
            f"t2={brats / 'BraTS-GLI-00001-000-t2w.nii.gz'}",
        ],
        "brats_240x240x155_t1_t2_to_flair": [
            f"t1={brats / 'BraTS-GLI-00001-000-t1n.nii.gz'}", f"t2={brats / 'BraTS-GLI-00001-000-t2w.nii.gz'}",
        ],
        "cstar_124x160x140_t1_t2_to_flair (README demo)": [
            f"t1={REPO / 'examples/cstar_stroke/T1.nii.gz'}", f"t2={REPO / 'examples/cstar_stroke/T2.nii.gz'}",
        ],
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, inputs in cases.items():
            if not all(Path(i.split("=", 1)[1]).exists() for i in inputs):
                results[name] = "skipped: data absent"
                continue
            runs = []
            for k in range(2):
                out = Path(tmp) / f"{k}_{abs(hash(name))}.nii.gz"
                run = run_measured([MRSYNTH, "synthesize", "--in", *inputs, "--target", "flair", "--out", str(out)], threads=2)
                assert run["rc"] == 0, run["stderr"]
                runs.append(run)
            results[name] = {
                "seconds": [r["seconds"] for r in runs],
                "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
            }
            print(name, results[name], flush=True)
    print(write_result("synthesize", {"threads": 2, "model": "shipped unet FLAIR", "cases": results}))


if __name__ == "__main__":
    main()
