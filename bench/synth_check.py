"""Synthetic-data acceptance check: does the 24 h history add to the last values? (issue 11, item 5)

Usage: python bench/synth_check.py [--seeds 0 1 2] [--patients 1000] [--sites 3] [--work DIR]
                                   [--min-gain 0.03] [--max-task-auroc 0.97]

Per data seed it writes the synthetic hospitals, runs the federated statistics round, tokenizes, and
scores the last-value LR and the GRU over hours 0..23 exactly as ``clin-jepa evaluate`` does
(``evaluate_baselines`` with default ``EvalSettings``; held-out split, all sites pooled). Prints per seed
the mean AUROC of each, their difference, the highest single-task AUROC, the load average and the time,
then per task AUROCs and per-site positive rates. Exits 1 when the criterion fails: GRU − LR ≥
``--min-gain`` on every seed and no task above ``--max-task-auroc`` for either model.
Runs single-threaded (one torch/BLAS thread) so that it is polite on a shared machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from clin_jepa.data.synth.history_check import (  # noqa: E402
    MAX_TASK_AUROC,
    MIN_GAIN,
    check_seed,
    format_table,
    verdict,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--patients", type=int, default=1000, help="subjects per site (default 1000)")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="keep the generated hospitals here")
    ap.add_argument("--min-gain", type=float, default=MIN_GAIN)
    ap.add_argument("--max-task-auroc", type=float, default=MAX_TASK_AUROC)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        r = check_seed(seed, args.patients, args.sites, args.work)
        results.append(r)
        one, five, fifteen = r.load
        print(f"seed {seed}: LR {r.lr:.3f}  GRU {r.gru:.3f}  diff {r.gain:+.3f}  max task {r.max_task:.3f}  "
              f"(load {one:.1f}/{five:.1f}/{fifteen:.1f}, {r.seconds:.0f} s)", flush=True)
    print(format_table(results))
    v = verdict(results, args.min_gain, args.max_task_auroc)
    print("PASS" if v.passed else "FAIL: " + "; ".join(v.reasons))
    return 0 if v.passed else 1


if __name__ == "__main__":
    sys.exit(main())
