"""Training-step throughput of the tiny and small presets on CPU (and base on CUDA with bf16 when a GPU
is present). Prints step time, patient-hours/s (= tokens/s: one token per patient-hour), FLOPs per step
and achieved FLOP/s per configuration, model FLOP utilization on a known GPU, then the ratios.

FLOPs per step are the closed form of ``clin_jepa.flops.analytic_step_flops`` (matmuls: 2 x params x
tokens per pass, backward 2x forward where gradients flow, plus the attention term 4 T^2 d per layer and
sequence); ``FlopCounterMode`` is run on the same step as a cross-check and printed next to it (on CPU it
does not count attention, so it comes out lower by exactly that term).

    python bench/train_step.py [--batch 32] [--hours 72] [--steps 10] [--compile] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from clin_jepa.curriculum import CurriculumConfig, FixedSchedule, phase_at
from clin_jepa.flops import analytic_step_flops, measured_step_flops, peak_flops
from clin_jepa.models import ClinJEPA, preset
from clin_jepa.models.testing import random_batch
from clin_jepa.train import build_optimizer, train_steps


def bench(name, device, batch_size, hours, steps, compile_, phase_step):
    torch.manual_seed(0)
    model = ClinJEPA(preset(name)).to(device)
    if compile_:
        for m in (model.encoder, model.target_encoder, model.predictor):
            m.compile()
    ccfg = CurriculumConfig()
    opt = build_optimizer(model, ccfg)
    phase = phase_at(phase_step, 100, ccfg)
    schedule = FixedSchedule(phase, lr=1e-4, momentum=phase.ema_momentum)
    batches = itertools.cycle([random_batch(model.cfg, batch_size, hours, seed=s) for s in range(4)])
    train_steps(model, batches, opt, schedule, 0, 2, device=device)  # warm up (allocator, compile)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_steps(model, batches, opt, schedule, 2, steps, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - start) / steps
    n_params = sum(p.numel() for p in model.online_parameters())
    flops = analytic_step_flops(model.cfg, batch_size, hours, phase.trains_encoder)
    counted = measured_step_flops(model, {k: v.to(device) for k, v in next(batches).items()}, phase)
    peak = peak_flops(device)
    mfu = f"  MFU={flops / dt / peak:6.1%}" if peak else ""
    print(f"{name:6s} {device.type:4s} phase={phase.name:8s} params={n_params / 1e6:7.2f}M "
          f"step={dt * 1e3:9.1f} ms  patient-hours/s={batch_size * hours / dt:11.0f}  "
          f"GFLOP/step={flops / 1e9:8.2f} (counter {counted / 1e9:8.2f})  "
          f"achieved={flops / dt / 1e9:9.2f} GFLOP/s{mfu}", flush=True)
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hours", type=int, default=72)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"batch={args.batch} hours={args.hours} threads={torch.get_num_threads()} compile={args.compile}")
    t = {}
    for name in ("tiny", "small"):
        t[name, "joint"] = bench(name, cpu, args.batch, args.hours, args.steps, args.compile, 20)
        t[name, "warmup"] = bench(name, cpu, args.batch, args.hours, args.steps, args.compile, 0)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        t["small", "cuda"] = bench("small", gpu, args.batch, args.hours, args.steps, args.compile, 20)
        t["base", "cuda"] = bench("base", gpu, args.batch, args.hours, args.steps, args.compile, 20)
    print("ratios:")
    print(f"  small/tiny step time (joint, cpu):        {t['small', 'joint'] / t['tiny', 'joint']:.2f}x")
    for name in ("tiny", "small"):
        print(f"  {name} joint/warmup step time (E+P vs P): {t[name, 'joint'] / t[name, 'warmup']:.2f}x")
    if ("base", "cuda") in t:
        print(f"  small cpu/cuda step time:                 {t['small', 'joint'] / t['small', 'cuda']:.2f}x")
        print(f"  base cuda/small cuda step time:           {t['base', 'cuda'] / t['small', 'cuda']:.2f}x")


if __name__ == "__main__":
    main()
