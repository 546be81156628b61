"""Federated evaluation overhead: wall time of a `make demo`-like `flwr run` with the default evaluation
rounds (``eval-every = 0``: after each phase and the last round) ÷ the same run without them
(``eval-every = -1``).

    python bench/eval_overhead.py [--rounds 10] [--local-steps 10] [--preset wide] [--patients 600]
                                  [--work DIR]

The demo's settings (pyproject's run config: 3 synthetic hospitals of 600 patients, preset ``wide``,
10 local steps) except the number of rounds: the evaluation rounds are one per phase whatever the round
count, so fewer rounds than the demo's 20 make the ratio an upper bound of the demo's. Both runs start
from the same prepared-tensor caches (filled by a first run) and are timed from `flwr run` to its exit.
Prints each run's wall time, the evaluation rounds' own time (their ``round_time_s``), and the ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from _common import check, flower_run, load_average, make_hospitals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--preset", default="wide")
    p.add_argument("--patients", type=int, default=600)
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="eval_overhead_"))
    sites = make_hospitals(work / "data", 3, args.patients)
    walls: dict[str, float] = {}
    for tag, every in (("warmup", -1), ("without", -1), ("with", 0)):
        out = work / f"run_{tag}"
        shutil.rmtree(out, ignore_errors=True)
        rounds = 1 if tag == "warmup" else args.rounds  # the warm-up only fills the tensor caches
        config = {"num-rounds": rounds, "local-steps": args.local_steps, "preset": args.preset,
                  "site-configs": ",".join(map(str, sites)), "checkpoint-dir": str(out),
                  "synth-if-missing": False, "eval-every": every}
        run = flower_run(work / f"flwr_{tag}", config, num_supernodes=3, timeout=3600)
        check(run, rounds)
        if tag == "warmup":
            continue
        walls[tag] = run.wall_s
        evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                 if x.strip() and json.loads(x).get("phase") == "evaluate"]
        eval_s = sum(e["round_time_s"] for e in evals)
        mean = evals[-1]["aggregate"]["mean_auroc"] if evals else None
        print(f"{tag} evaluation: {run.wall_s:.0f} s wall, {len(evals)} evaluation rounds taking "
              f"{eval_s:.0f} s, last eval mean AUROC {mean} ({load_average()})", flush=True)
    print(f"evaluation overhead: {walls['with'] / walls['without']:.2f}x the run without it "
          f"({args.rounds} rounds x {args.local_steps} steps, preset {args.preset}; {load_average()})")


if __name__ == "__main__":
    main()
