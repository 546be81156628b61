"""Scale: 50 simulated hospitals, 10 sampled per round, 10 rounds, `tiny` preset — peak memory of the
whole simulation and whether it grows with rounds.

    python bench/scale.py [--sites 50] [--per-round 10] [--rounds 10] [--local-steps 5] [--batch 8]
                          [--patients 20] [--work DIR]

The sites are small synthetic hospitals (``--patients`` subjects each; the generator names 26 per call,
so further ones come from other seeds, renamed). The run config samples ``fraction-train = per-round /
sites`` of the nodes each round (``min-sites`` = per-round). Memory is the proportional set size (PSS)
summed over every process below the private SuperLink — superexec, flwr-simulation with the ServerApp,
Ray's GCS/raylet/workers — sampled twice a second. Prints the peak per round, then, last, the peak over
the run and the ratio of the last round's peak to the first's (growth with rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import ROOT, check, flower_run, load_average, make_hospitals

MB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=50)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        t0 = time.perf_counter()
        sites = make_hospitals(work / "hospitals", args.sites, args.patients)
        print(f"{len(sites)} hospitals x {args.patients} subjects ready in {time.perf_counter() - t0:.0f} s; "
              f"{load_average()}", flush=True)
        out = work / "fl"
        shutil.rmtree(out, ignore_errors=True)
        rc = {"preset": "tiny", "num-rounds": args.rounds, "local-steps": args.local_steps,
              "batch-size": args.batch, "site-configs": ",".join(map(str, sites)), "checkpoint-dir": str(out),
              "synth-if-missing": False, "fraction-train": args.per_round / args.sites,
              "min-sites": args.per_round, "round-timeout": 900.0}
        run = flower_run(work / "flwr", rc, num_supernodes=len(sites), timeout=3600, sample_rss=True)
        check(run, args.rounds)
        rss = run.rss
        assert rss is not None
        asked = [len(ln["sites"]) for ln in run.lines[1:]]
        print(f"flwr run {run.wall_s:.0f} s; sites asked per round {asked}; statistics round "
              f"{run.lines[0]['round_time_s']:.0f} s")
        per_round = [rss.peak_while(r) for r in range(1, args.rounds + 1)]
        print(f"peak PSS during statistics round: {rss.peak_while(0) / MB:.0f} MB")
        for r, b in enumerate(per_round, start=1):
            print(f"  round {r:2d}: peak PSS {b / MB:7.0f} MB  ({run.lines[r]['round_time_s']:.1f} s)")
        print(load_average())
        print(f"peak PSS of the whole process tree {rss.peak() / MB:.0f} MB; last/first round peak "
              f"{per_round[-1] / max(1, per_round[0]):.2f}x")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
