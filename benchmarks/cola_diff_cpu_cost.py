"""CPU cost of the CoLa-Diff presets: parameters, seconds per training step, seconds of DDIM sampling.

Random weights, the ``cpu`` preset (80x96 slices, latent 4x20x24), fp32, ``--threads`` torch threads.
Each number is the median of ``--repeats`` runs after one warm-up. A reference row, MONAI's
``DiffusionModelUNet`` ch(64,128,256) at 56x56 with batch 8 (1.47 s per training step on an idle machine
in ``../shared/reference/cpu-measurements.md``), is timed in the same process, so the slowdown from
other work on the machine can be read off.

Usage: python benchmarks/cola_diff_cpu_cost.py [--threads 2] [--repeats 3] [--stack 64]
Results: benchmarks/results/cola_diff_cpu_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import write_result  # noqa: E402


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def _denoiser(model, cond: torch.Tensor, presence: torch.Tensor):
    return lambda x_t, t: model(x_t, t, cond, presence)[:, :4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stack", type=int, default=64, help="slices of the 'slice stack' sampled with DDIM-50")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from monai.networks.nets import DiffusionModelUNet

    from mrsynth_cli.families.cola_diff.autoencoder import AutoencoderTrainer, autoencoder_loss
    from mrsynth_cli.families.cola_diff.config import ABLATIONS, CoLaDiffConfig, load_preset
    from mrsynth_cli.families.cola_diff.inference import build_sampler
    from mrsynth_cli.families.cola_diff.network import CoLaDiffModel
    from mrsynth_cli.families.cola_diff.train import make_loss
    from mrsynth_cli.sampling import initial_noise, sample

    generator = torch.Generator().manual_seed(0)
    results: dict = {"threads": args.threads, "repeats": args.repeats}

    reference = DiffusionModelUNet(spatial_dims=2, in_channels=16, out_channels=4, channels=(64, 128, 256),
                                   num_res_blocks=2, attention_levels=(False, False, True), num_head_channels=32,
                                   use_flash_attention=True)
    ref_opt = torch.optim.AdamW(reference.parameters(), 1e-4)
    x_ref, t_ref = torch.randn(8, 16, 56, 56), torch.randint(0, 1000, (8,))

    def ref_step() -> None:
        ref_opt.zero_grad()
        reference(x_ref, t_ref).pow(2).mean().backward()
        ref_opt.step()

    results["reference_unet_train_step_s"] = {"measured": _median(ref_step, args.repeats), "idle_reference": 1.47}
    print(results, flush=True)

    preset = load_preset("cpu")
    ae = AutoencoderTrainer(preset.autoencoder)
    ae_opt = torch.optim.AdamW(ae.parameters(), 5e-4)
    ae_batch = {"x": torch.rand(preset.autoencoder.batch_size, 1, *preset.autoencoder.model_shape[:2])}

    def ae_step() -> None:
        ae_opt.zero_grad()
        autoencoder_loss(ae, ae_batch, generator).backward()
        ae_opt.step()

    results["autoencoder"] = {
        "params_M": round(sum(p.numel() for p in ae.autoencoder.parameters()) / 1e6, 3),
        "train_step_s_batch8": _median(ae_step, args.repeats),
    }
    print(results["autoencoder"], flush=True)

    base = CoLaDiffConfig(autoencoder=preset.autoencoder, spacing_mm=preset.autoencoder.spacing_mm,
                          model_shape=preset.autoencoder.model_shape, **preset.model)
    variants = {"full": base, **{f"without {a}": base.ablated([a]) for a in ABLATIONS}}
    h, w = base.autoencoder.latent_shape
    results["cola_diff"] = {}
    for name, config in variants.items():
        config = replace(config, batch_size=8)
        model = CoLaDiffModel(config)
        optimizer = torch.optim.Adam(model.eps.parameters(), 2e-4)
        loss_fn = make_loss(config)
        batch = {"x0": torch.randn(8, 4, h, w), "cond": torch.randn(8, config.condition_channels, h, w),
                 "presence": torch.ones(8, len(config.inputs))}

        def step(model=model, optimizer=optimizer, loss_fn=loss_fn, batch=batch) -> None:
            optimizer.zero_grad()
            loss_fn(model, batch, generator).backward()
            optimizer.step()

        row = {"params_M": round(sum(p.numel() for p in model.eps.parameters()) / 1e6, 3),
               "train_step_s_batch8": _median(step, args.repeats)}
        if name == "full":
            model.eval()

            def ddim(slices: int, steps: int = 50, model=model, config=config) -> None:
                sampler = build_sampler(config, "ddim", steps)
                for start in range(0, slices, 8):
                    b = min(8, slices - start)
                    cond = torch.randn(b, config.condition_channels, h, w)
                    presence = torch.ones(b, len(config.inputs))
                    x = initial_noise((b, 4, h, w), generator)
                    kappa = sample(_denoiser(model, cond, presence), sampler, x, generator=generator)
                    model.decode(kappa)

            row["ddim50_s_one_slice"] = _median(lambda: ddim(1), args.repeats)
            row[f"ddim50_s_stack_of_{args.stack}_slices_in_chunks_of_8"] = _median(lambda: ddim(args.stack), 1)
            encode_batch = torch.rand(8, 1, *base.model_shape[:2])
            encode = lambda m=model, e=encode_batch: m.encode(e)  # noqa: E731
            row["encode_s_per_slice"] = round(_median(encode, args.repeats) / 8, 4)
        results["cola_diff"][name] = row
        print(name, row, flush=True)
    print(write_result("cola_diff_cpu_cost", results))


if __name__ == "__main__":
    main()
