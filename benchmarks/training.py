"""Training benchmark: the harness's overhead over a bare loop, and the cost of multi-view attention.

    python benchmarks/training.py [--steps 20] [--warmup 3] [--out benchmarks/results/training.json]

Five timed loops over the same UNet config (params.yaml train_base.unet) and batch size,
synthetic data (the cost of the data path is part of the harness and is measured with it):

1. bare: a plain diffusers + torch loop (UNet2DConditionModel, DDPMScheduler.add_noise,
   v-target, AdamW, backward) written inline here;
2. harness: dreamline.training.loop.Trainer with the base objective (EMA, clipping,
   schedule, per-step generators, curve logging; checkpoints off during the timing), in
   fp32 and again under bf16 autocast (``compute.precision: bf16``);
3. multiview F=4: the converted MVDream UNet, batches of B objects x 4 views, joint attention;
4. multiview off: the same model and batch with num_views=1 (per-view attention).
Each figure is the median seconds per step after `--warmup` steps, and samples per second.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg": os.getloadavg()}


def _time_steps(step, n: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + n):
        t = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/training.json")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from dreamline.config import TrainingParams, load_params
    from dreamline.models.unet import build_unet, to_multiview
    from dreamline.training.loop import Compute, Trainer
    from dreamline.training.objectives import DenoiseBatch, training_loss

    torch.set_num_threads(args.threads)
    p = load_params(ROOT / "params.yaml").train_base
    r = p.unshuffle
    c, hw, bs, L, D = 3 * r * r, p.resolution // r, p.train.batch_size, p.max_tokens, 384
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=p.diffusion.beta_schedule,
                          prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(bs, c, hw, hw, generator=g)
    states = torch.randn(bs, L, D, generator=g)
    mask = torch.ones(bs, L, dtype=torch.long)
    cams = torch.randn(bs, 16, generator=g)
    results = {"machine": _machine(), "unet": p.unet.model_dump(mode="json"), "batch": bs,
               "input": [c, hw, hw], "threads": args.threads, "steps": args.steps}

    def record(name, times, samples):
        med = statistics.median(times)
        results[name] = {"s_per_step_median": round(med, 4), "s_per_step_mean": round(statistics.mean(times), 4),
                         "samples_per_s": round(samples / med, 1)}
        print(f"{name:24s} {med:7.3f} s/step (median of {len(times)})  {samples / med:7.1f} samples/s", flush=True)

    torch.manual_seed(0)
    unet = build_unet(p.unet, in_channels=c, sample_size=hw, cross_attention_dim=D)
    results["params_M"] = round(sum(q.numel() for q in unet.parameters()) / 1e6, 3)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)

    def bare_step(i):
        t = torch.randint(0, 1000, (bs,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=states,
                    encoder_attention_mask=mask).sample
        loss = F.mse_loss(pred, sched.get_velocity(x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    print(f"UNet {results['params_M']} M params, batch {bs} x {c}x{hw}x{hw}, {args.threads} threads")
    record("bare_diffusers_torch", _time_steps(bare_step, args.steps, args.warmup), bs)

    batch = DenoiseBatch(x0, states, mask, None, 1)
    tp = TrainingParams(steps=args.steps + args.warmup, batch_size=bs, checkpoint_every=10**6,
                        log_every=1, threads=args.threads)
    stamps = []

    def make_batch(step):
        stamps.append(time.perf_counter())
        return batch

    def harness_run(name, compute=None):
        torch.manual_seed(0)
        model = build_unet(p.unet, in_channels=c, sample_size=hw, cross_attention_dim=D)
        stamps.clear()
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(model, tp, Path(tmp), make_batch, lambda m, b, gen: training_loss(m, sched, b, gen),
                    samples_per_step=bs, run_key="bench", compute=compute).run()
        record(name, [b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:])], bs)

    harness_run("dreamline_trainer")
    # compute.precision bf16: autocast around the loss, fp32 weights and optimiser (loop.Compute)
    harness_run("dreamline_trainer_bf16", Compute(device="cpu", precision="bf16"))
    results["bf16_speedup"] = round(results["dreamline_trainer"]["s_per_step_median"]
                                    / results["dreamline_trainer_bf16"]["s_per_step_median"], 2)
    results["harness_overhead_pct"] = round(
        100 * (results["dreamline_trainer"]["s_per_step_median"] / results["bare_diffusers_torch"]["s_per_step_median"] - 1), 1)

    views = 4
    mv = to_multiview(build_unet(p.unet, in_channels=c, sample_size=hw, cross_attention_dim=D))
    opt = torch.optim.AdamW(mv.parameters(), lr=1e-4)
    for name, nv in (("multiview_attention_F4", views), ("per_view_attention_F1", 1)):
        b = DenoiseBatch(x0, states, mask, cams, nv)

        def mv_step(i, b=b):
            loss = training_loss(mv, sched, b, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        record(name, _time_steps(mv_step, args.steps, args.warmup), bs)
    results["multiview_attention_cost_pct"] = round(
        100 * (results["multiview_attention_F4"]["s_per_step_median"] / results["per_view_attention_F1"]["s_per_step_median"] - 1), 1)
    print(f"harness overhead {results['harness_overhead_pct']:+.1f}%   "
          f"multi-view attention cost {results['multiview_attention_cost_pct']:+.1f}% per step")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
