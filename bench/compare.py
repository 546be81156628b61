"""Curriculum vs ablations vs local-only vs federated on the synthetic hospitals, over several init seeds.

    .venv/bin/python bench/compare.py [--out runs/compare] [--steps 300] [--preset tiny] [--patients 300]
        [--seeds 0 1 2] [--batch-size 32] [--jobs 2] [--run-federated] [--no-local] [--bootstrap 200]

1. ``clin-jepa synth`` writes the hospitals (skipped when OUT/data already holds them).
2. Per seed S, ``clin-jepa train`` runs with **matched budgets** — the same optimizer steps, batch size and
   preset, so every model sees the same number of stays: ``pooled@S`` (curriculum on all sites), the
   ablations ``naive@S``, ``frozen-encoder@S``, ``no-ema@S`` (pooled), ``local-<site>@S`` (curriculum on
   one site's data alone, with that site's own quantile bins, as a hospital training alone would), and
   ``untrained@S`` (``--steps 0``: the initial weights of seed S, each trained run's paired control).
   A run whose checkpoint already reached its step count is reused.
3. ``--run-federated``: ``federated@S`` under ``flwr run`` on a private local SuperLink with
   rounds × local-steps × sites = steps.
4. ``clin-jepa evaluate`` once per discretization (the baselines, GRU per seed, with the pooled group), all
   on the pooled held-out stays of every site; then ``OUT/comparison.md`` / ``comparison.json``: mean ± sd
   over seeds and each trained run's paired difference to its own seed's untrained model, with the
   bootstrap noise of that difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

ABLATIONS = ("naive", "frozen-encoder", "no-ema")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.run_arguments(p, out="runs/compare", patients=300, steps=300)
    p.add_argument("--run-federated", action="store_true", help="also train with `flwr run .` per seed")
    return p.parse_args(argv)


def jobs_of(args: argparse.Namespace, configs: list[Path]) -> list[common.TrainJob]:
    runs, jobs = args.out / "runs", []
    for s in args.seeds:
        plans = {"untrained": ("curriculum", configs, 0), "pooled": ("curriculum", configs, args.steps)}
        plans.update({mode: (mode, configs, args.steps) for mode in ABLATIONS})
        if not args.no_local:
            plans.update({f"local-{c.stem}": ("curriculum", [c], args.steps) for c in configs})
        jobs += [common.TrainJob(f"{label}@{s}", tuple(sites), runs / f"{label}@{s}", steps, s, mode)
                 for label, (mode, sites, steps) in plans.items()]
    return jobs


def table(merged: dict) -> str:
    """The report's across-seeds summary and per-checkpoint tables, for all reports merged."""
    from clin_jepa.evaluation.report import markdown

    body = markdown({"settings": {"embedding": "", "cohorts": "", "bootstrap": 0}, "notes": [], **merged})
    return body.split("\n\n", 2)[2].split("\nMean AUROC:")[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    start = time.perf_counter()
    print(f"compare: {common.load_average()}", flush=True)
    configs = common.synth_sites(args.out / "data", args.sites, args.patients, args.data_seed)
    logs = args.out / "logs"
    ckpts = common.train_all(jobs_of(args, configs), args.preset, args.batch_size, args.device, logs,
                             args.jobs)
    for s in args.seeds if args.run_federated else []:
        ckpts[f"federated@{s}"] = common.run_federated(
            args.out / "runs" / f"federated@{s}", configs, args.steps, args.local_steps, args.preset, s,
            args.batch_size, logs, args.federated_timeout)
    merged = common.evaluate_benchmark(args, configs, ckpts, first=f"pooled@{args.seeds[0]}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    md = (f"# Comparison on {args.sites} synthetic hospitals\n\n"
          f"Budget per run: {args.steps} steps × batch {args.batch_size}, preset {args.preset}, seeds "
          f"{args.seeds}; {args.patients} subjects per hospital. Held-out stays of all sites "
          f"({merged['data']['n_stays']}); {common.load_average()}. "
          f"Reports: {', '.join(merged['reports'])}.\n\n"
          + table(merged) + "\n")
    common.write_outputs(args.out, "comparison", {"settings": settings, **merged}, md)
    print(f"total {time.perf_counter() - start:.0f} s -> {args.out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    os.chdir(common.ROOT)
    raise SystemExit(main())
