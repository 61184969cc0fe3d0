"""ALDM costs on the CPU: training-step seconds and peak RSS per stage, sampling seconds per volume, and
the memory a paper-scale volume needs.

Every measurement runs in a fresh child process (``_util.run_measured``: wall seconds, peak RSS of the
child), with the networks of the ``cpu`` preset (2 mm, 80x96x80, latent 3x20x24x20) on random inputs in
[0, 1] (timing and memory do not depend on the weights):

* ``train_step``: per stage (vqgan with the preset's terms, and with the cycle path and the patch
  discriminator switched on; spade; ldm), the mean seconds of optimiser steps 2..N (step 1 warms up).
* ``sampling``: one source volume to one target and to three targets at once (one batch), DDIM 50, 20
  and 10 steps, including encoding and decoding.
* ``paper_scale``: the ``paper`` preset (1 mm, 160x192x160, latent 3x40x48x40). A forward/backward pass
  is measured at growing fractions of the grid; peak RSS is linear in the voxel count, so the full-size
  figure is extrapolated from a least-squares line through them, and measured directly only when the
  line predicts less than ``--measure-below`` GiB (the machine is shared).

Usage: python benchmarks/aldm.py [--threads 2] [--steps 3] [--measure-below 6] [--full-unet-only]
Result: benchmarks/results/aldm.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, run_measured, write_result  # noqa: E402

CHILD = r'''
import json, sys, time, torch
from mrsynth_cli.families.aldm.config import AldmConfig, load_preset
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
model = {**load_preset(spec["preset"]).model, **spec.get("changes", {})}
config = AldmConfig.from_dict(model)
g = torch.Generator().manual_seed(0)
kind = spec["kind"]
out = {}
if kind in ("vqgan", "spade", "ldm", "ae_fwd_bwd", "unet_fwd_bwd"):
    from mrsynth_cli.families.aldm.train import VQGANTrainer, vqgan_loss, SpadeTrainer, spade_loss, make_ldm_loss
    from mrsynth_cli.families.aldm.network import AldmModel
    shape = spec.get("shape", config.model_shape)
    latent = [n // config.downsample for n in shape]
    x = torch.rand(1, 1, *shape, generator=g)
    z = torch.randn(1, config.ae_latent_channels, *latent, generator=g)
    batch = {"x_src": x, "x_tar": x.flip(2), "z_src": z, "z_tar": z.flip(2),
             "src": torch.tensor([0]), "tar": torch.tensor([1])}
    if kind in ("vqgan", "ae_fwd_bwd"):
        net, loss_fn = VQGANTrainer(config), vqgan_loss
    elif kind == "spade":
        net, loss_fn = SpadeTrainer(config), spade_loss
    else:
        net = AldmModel(config)
        net.autoencoder.requires_grad_(False); net.spade.requires_grad_(False)
        loss_fn = make_ldm_loss(config)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i in range(spec.get("steps", 4)):
        t0 = time.perf_counter()
        opt.zero_grad(); loss = loss_fn(net, batch, g); loss.backward(); opt.step()
        times.append(time.perf_counter() - t0)
    out = {"step_seconds": times, "params_trained": sum(p.numel() for p in params)}
elif kind == "sample":
    from mrsynth_cli.families.aldm.inference import build_sampler, translate
    from mrsynth_cli.families.aldm.network import AldmModel
    from mrsynth_cli.io.contrasts import Contrast
    net = AldmModel(config).eval()
    source = torch.rand(*config.model_shape, generator=g).numpy()
    targets = [Contrast(c) for c in spec["targets"]]
    t0 = time.perf_counter()
    translate(net, config, source, targets, sampler=build_sampler(config, "ddim", spec["ddim"]), generator=g,
              device=torch.device("cpu"))
    out = {"seconds": time.perf_counter() - t0}
print("RESULT" + json.dumps(out))
'''


def child(spec: dict, threads: int) -> dict:
    measured = run_measured([sys.executable, "-c", CHILD, json.dumps(spec)], threads=threads,
                            env={"PYTHONPATH": str(REPO)})
    if measured["rc"] != 0:
        return {"error": measured["stderr"][-800:], "peak_rss_gib": measured["peak_rss_gib"]}
    result = json.loads(measured["stdout"].split("RESULT", 1)[1])
    return {**result, "process_seconds": measured["seconds"], "peak_rss_gib": measured["peak_rss_gib"]}


def _summary(result: dict) -> dict:
    if "step_seconds" in result:
        later = result["step_seconds"][1:] or result["step_seconds"]
        result["mean_step_seconds"] = round(sum(later) / len(later), 3)
        result["step_seconds"] = [round(s, 3) for s in result["step_seconds"]]
    return result


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / max(1e-12, sum((x - mx) ** 2 for x, _ in points))
    return slope, my - slope * mx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--measure-below", type=float, default=6.0)
    parser.add_argument("--full-unet-only", action="store_true",
                        help="only measure the paper-scale UNet forward/backward at full size "
                        "into an existing aldm.json")
    args = parser.parse_args()
    if args.full_unet_only:
        path = Path(__file__).resolve().parent / "results" / "aldm.json"
        data = json.loads(path.read_text())
        data["paper_scale"]["unet_fwd_bwd"]["measured_full"] = {
            **_summary(child({"preset": "paper", "kind": "unet_fwd_bwd", "shape": [160, 192, 160], "steps": 1},
                             args.threads)),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        }
        data.pop("machine", None)
        print(write_result("aldm", data))
        return
    load = os.getloadavg()
    result: dict = {"threads": args.threads, "load_average_at_start": [round(v, 2) for v in load],
                    "grid": "cpu preset: 2 mm, 80x96x80, latent 3x20x24x20"}
    train = {}
    cases = {
        "vqgan": {"kind": "vqgan"},
        "vqgan_cycle": {"kind": "vqgan", "changes": {"ae_cycle_weight": 0.5}},
        "vqgan_adversarial": {"kind": "vqgan", "changes": {"ae_adversarial_weight": 0.1}},
        "spade": {"kind": "spade"},
        "ldm": {"kind": "ldm"},
    }
    for name, spec in cases.items():
        train[name] = _summary(child({"preset": "cpu", "steps": args.steps, **spec}, args.threads))
        print(name, train[name], flush=True)
    result["train_step"] = train
    sampling = {}
    for steps in (50, 20, 10):
        for targets in (["T2"], ["T1ce", "T2", "FLAIR"]):
            key = f"ddim{steps}_{len(targets)}target"
            sampling[key] = child({"preset": "cpu", "kind": "sample", "ddim": steps, "targets": targets}, args.threads)
            print(key, sampling[key], flush=True)
    result["sampling"] = sampling

    paper: dict = {"grid": "paper preset: 1 mm, 160x192x160, latent 3x40x48x40"}
    full_voxels = 160 * 192 * 160
    for kind, shapes in (("ae_fwd_bwd", [(16, 16, 16), (24, 24, 24), (32, 32, 32)]),
                         ("unet_fwd_bwd", [(32, 32, 32), (48, 48, 48), (64, 64, 64)])):
        points, runs = [], {}
        for shape in shapes:
            run = _summary(child({"preset": "paper", "kind": kind, "shape": list(shape), "steps": 1,
                                  "changes": {"ae_adversarial_weight": 0.0} if kind == "ae_fwd_bwd" else {}},
                                 args.threads))
            runs["x".join(map(str, shape))] = run
            if "error" not in run:
                points.append((shape[0] * shape[1] * shape[2], run["peak_rss_gib"]))
            print(kind, shape, run, flush=True)
        slope, intercept = _fit(points)
        predicted = intercept + slope * full_voxels
        entry = {"measured": runs, "gib_per_megavoxel": round(slope * 1e6, 4), "intercept_gib": round(intercept, 3),
                 "predicted_full_gib": round(predicted, 1)}
        if predicted < args.measure_below:
            spec = {"preset": "paper", "kind": kind, "shape": [160, 192, 160], "steps": 1}
            full = _summary(child(spec, args.threads))
            entry["measured_full"] = full
        else:
            entry["measured_full"] = f"not run: predicted {predicted:.1f} GiB >= --measure-below {args.measure_below}"
        paper[kind] = entry
    result["paper_scale"] = paper
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(write_result("aldm", result))


if __name__ == "__main__":
    main()
