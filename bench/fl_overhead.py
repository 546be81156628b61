"""Federated-learning overhead: wall time of a `flwr run` simulation of 3 hospitals ÷ the centralized
trainer doing the same number of optimizer steps on the same data.

    python bench/fl_overhead.py [--rounds 10] [--local-steps 10] [--batch 16] [--preset tiny]
                                [--patients 200] [--repeat 2] [--work DIR]

Same work on both sides: the simulation runs R rounds in which each of the 3 sites takes K optimizer
steps on batches of B of its own stays, i.e. 3·R·K steps of batch B in all; the centralized trainer
(`clin-jepa train` on the 3 sites pooled) takes the same 3·R·K steps of batch B. Both therefore see the
same number of stays and do the same FLOPs; the comparison is of everything around the steps.
(Centralizing R·K steps of batch 3B instead would count the same samples but fewer, larger steps.)

Both start cold as processes and warm as data: each is timed from a fresh interpreter / `flwr run`
invocation to its exit, so imports, the statistics round (every site's value histograms, merged into
quantile edges), checkpoints and shutdown are counted on both sides; the sites' prepared-tensor caches
are filled once beforehand (a hospital prepares its tensors once, not per run). The simulation runs
one Ray worker per core with one torch thread each (as the ClientApp sets); the centralized trainer runs
with one torch thread by default (``--central-threads 1,0`` adds torch's default and takes the faster):
on a shared 2-core machine under load, torch's two OpenMP threads spin against the other processes and
ran 3x (60 steps) to 30x (300 steps) slower than one thread, which would flatter the federation.

Prints the run's breakdown (start-up, statistics round, training rounds, per-site client time), then,
last, the ratios, one per repetition and their median: the whole run (``flwr run`` wall ÷ `clin-jepa train`
wall) and per training round (a round's wall time, as the ServerApp logs it, ÷ the centralized trainer's
own time for the same 3·K steps, from the patient-hours/s it logs every K steps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import ROOT, check, flower_run, load_average, make_hospitals, run_cli


def federated(work: Path, sites: list[Path], args: argparse.Namespace, tag: str):
    out = work / f"fl_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    rc = {"preset": args.preset, "num-rounds": args.rounds, "local-steps": args.local_steps,
          "batch-size": args.batch, "hours": args.hours, "site-configs": ",".join(map(str, sites)),
          "checkpoint-dir": str(out), "synth-if-missing": False, "min-sites": 3}
    # Ray forwards every worker's output to the simulation process by default; its log threads compete
    # with the ServerApp for the 2 cores. Off here unless --ray-logs (the ClientApps' own errors still
    # reach the server as error replies).
    fed = None if args.ray_logs else {"init-args-log-to-driver": False}
    run = flower_run(work / f"flwr_{tag}", rc, num_supernodes=len(sites), federation=fed)
    check(run, args.rounds)
    return run


def centralized(work: Path, sites: list[Path], args: argparse.Namespace, tag: str, threads: int):
    out = work / f"central_{tag}_{threads}"
    shutil.rmtree(out, ignore_errors=True)
    steps = len(sites) * args.rounds * args.local_steps
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    wall, _ = run_cli(["train", "--sites", *map(str, sites), "--out", str(out), "--preset", args.preset,
                       "--steps", str(steps), "--batch-size", str(args.batch), "--hours", str(args.hours),
                       "--log-every", str(args.local_steps), "--no-progress"], env)
    return wall, training_time(out / "metrics.jsonl", args.batch, args.hours, args.local_steps)


def training_time(metrics: Path, batch: int, hours: int, log_every: int) -> float:
    """Seconds the centralized trainer spent in its steps: each line's ``patient_hours_per_s`` covers the
    ``log_every`` steps before it."""
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return sum(log_every * batch * hours / ln["patient_hours_per_s"] for ln in lines)


def per_round_ratio(run, central_train_s: float, rounds: int) -> float:
    """Mean training-round wall time ÷ the centralized trainer's time for the same 3·K steps."""
    times = [ln["round_time_s"] for ln in run.lines if ln["round"] > 0]
    return (sum(times) / len(times)) / (central_train_s / rounds)


def breakdown(run, n_sites: int) -> str:
    rounds = [ln for ln in run.lines if ln["round"] > 0]
    stats_s = run.lines[0]["round_time_s"]
    train_s = sum(ln["round_time_s"] for ln in rounds)
    client = [s.get("client-time-s", 0.0) for ln in rounds for s in ln["sites"].values()]
    first = sum(s.get("client-time-s", 0.0) for s in rounds[0]["sites"].values()) if rounds else 0.0
    rest = (sum(client) - first) / max(1, len(client) - n_sites)
    wait = sum(ln.get("wait_s", float("nan")) for ln in rounds)
    return (f"  flwr run {run.wall_s:7.1f} s = start-up/shutdown {run.wall_s - stats_s - train_s:6.1f} s"
            f" + statistics round {stats_s:5.1f} s + {len(rounds)} training rounds {train_s:6.1f} s\n"
            f"  client time per site-round: first round {first / n_sites:.2f} s (tensors into the worker),"
            f" later {rest:.2f} s; sum over sites {sum(client):.1f} s\n"
            f"  per round: waiting for the sites {wait / max(1, len(rounds)):.2f} s, server's own work "
            f"{(train_s - wait) / max(1, len(rounds)):.2f} s (plan, screen, FedAvg, EMA; the checkpoint "
            "write comes after)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hours", type=int, default=72)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--patients", type=int, default=200, help="subjects per synthetic hospital")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--central-threads", default="1",
                    help="comma-separated torch thread counts to time the centralized run with (0 = torch's "
                         "default); the ratio uses the fastest")
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: temp dir)")
    ap.add_argument("--ray-logs", action="store_true", help="keep Ray's forwarding of worker output")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        sites = make_hospitals(work / "hospitals", 3, args.patients)
        from clin_jepa.trainer import prepare_sites

        prepared = prepare_sites(sites, args.hours)  # fills each site's tensor cache once
        steps = 3 * args.rounds * args.local_steps
        print(f"3 sites, {len(prepared.train)} train stays; {args.rounds} rounds x {args.local_steps} local "
              f"steps x 3 sites = {steps} steps of batch {args.batch}, preset {args.preset}")
        print(load_average())
        ratios, round_ratios = [], []
        for rep in range(args.repeat):
            central = {n: centralized(work, sites, args, str(rep), n)
                       for n in map(int, args.central_threads.split(","))}
            run = federated(work, sites, args, str(rep))
            wall, train_s = min(central.values())
            ratios.append(run.wall_s / wall)
            round_ratios.append(per_round_ratio(run, train_s, args.rounds))
            shown = ", ".join(f"{t:6.1f} s ({f'{n} thread' if n else 'default threads'}; steps {s:.1f} s)"
                              for n, (t, s) in central.items())
            print(f"rep {rep}: centralized {shown}; federated {run.wall_s:6.1f} s; {load_average()}")
            print(breakdown(run, len(sites)), flush=True)
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        per_round = ", ".join(f"{r:.2f}x" for r in round_ratios)
        print(f"per training round: round wall / centralized time for the same {3 * args.local_steps} steps: "
              f"{per_round}; median {statistics.median(round_ratios):.2f}x (goal <= 1.1x)")
        print(f"ratio federated / centralized (same steps, faster centralized setting): {each}; "
              f"median {statistics.median(ratios):.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
