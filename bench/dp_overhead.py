"""DP-SGD overhead: time of one DP step ÷ one plain step on the same batch, per Opacus grad-sample mode.

Both run ``train_steps`` on the same model size, phase and batch; the DP step adds per-sample gradients
(or ghost norms), clipping and noise. Ghost clipping cannot see a module called twice in one forward
(Opacus: "parameter tying"), and the predictor runs once per rollout step, so ghost is measured with
``--rollout 1`` only; every mode is also measured at rollout 1 so the rows compare like with like.

    python bench/dp_overhead.py [--preset small] [--batch 64] [--hours 72] [--steps 5] [--threads 1]

Plain and DP steps alternate and the medians are compared. Prints one line per (mode, rollout) and
ends with the ratios, ``ratio`` last on each line.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import warnings

import torch

from clin_jepa.curriculum import CurriculumConfig, FixedSchedule, phase_at
from clin_jepa.losses import LossConfig
from clin_jepa.models import ClinJEPA, preset
from clin_jepa.models.testing import random_batch
from clin_jepa.privacy.engine import GRAD_SAMPLE_MODES, private_training
from clin_jepa.train import build_optimizer, train_steps

warnings.filterwarnings("ignore", message=".*Full backward hook.*")
warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
warnings.filterwarnings("ignore", message=".*CPU autocast.*")


def _step_timer(model, opt, schedule, batch, loss_cfg, privacy=None):
    """A function running the next global step and returning its seconds (after one warm-up step)."""
    batches = itertools.repeat(batch)
    state = {"step": 0}

    def run() -> float:
        start = time.perf_counter()
        train_steps(model, batches, opt, schedule, state["step"], 1, privacy=privacy, loss_cfg=loss_cfg)
        state["step"] += 1
        return time.perf_counter() - start

    run()
    return run


def measure(args, mode: str, rollout: int) -> tuple[float, float]:
    """Median (plain step seconds, DP step seconds) for one mode. Plain and DP steps alternate, so a
    neighbour's load on the shared cores hits both alike."""
    cfg = preset(args.preset, n_concepts=16, n_treatments=6, n_bins=10, max_hours=args.hours)
    ccfg = CurriculumConfig()
    phase = phase_at(int(0.3 * 100), 100, ccfg)  # joint refinement: E and P both train
    schedule = FixedSchedule(phase, lr=1e-4)
    loss_cfg = LossConfig(rollout_steps=rollout)
    batch = random_batch(cfg, args.batch, args.hours, seed=1)
    torch.manual_seed(0)
    plain_model = ClinJEPA(cfg)
    dp_model = ClinJEPA(cfg)
    dp_model.load_state_dict(plain_model.state_dict())
    plain = _step_timer(plain_model, build_optimizer(plain_model, ccfg), schedule, batch, loss_cfg)
    with private_training(dp_model, build_optimizer(dp_model, ccfg), phase, noise_multiplier=1.0,
                          max_grad_norm=1.0, expected_batch_size=args.batch, mode=mode) as (hook, dp_opt):
        dp = _step_timer(dp_model, dp_opt, schedule, batch, loss_cfg, privacy=hook)
        times = [(plain(), dp()) for _ in range(args.steps)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hours", type=int, default=72)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(GRAD_SAMPLE_MODES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"preset={args.preset} batch={args.batch} hours={args.hours} steps={args.steps} "
          f"threads={args.threads} phase=joint (E+P)", flush=True)
    rows = []
    for mode in args.modes.split(","):
        for rollout in ((1,) if mode == "ghost" else (2, 1)):
            plain, dp = measure(args, mode, rollout)
            rows.append((mode, rollout, plain, dp))
            print(f"{mode:9s} rollout={rollout} plain={plain * 1e3:8.1f} ms  dp={dp * 1e3:8.1f} ms",
                  flush=True)
    print("DP step / plain step (same batch):")
    for mode, rollout, plain, dp in rows:
        print(f"  {mode:9s} rollout={rollout}  ratio={dp / plain:.2f}")


if __name__ == "__main__":
    main()
