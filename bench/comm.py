"""Communication: bytes each site uploads per round ÷ the full fp32 model (E + Ē + P), averaged over the
curriculum, per transport dtype, with the effect of the compact transport on loss and probe AUROC paired
over seeds (the same seed, data and schedule for every dtype).

    python bench/comm.py [--rounds 10] [--local-steps 10] [--batch 16] [--preset tiny] [--patients 200]
                         [--dtypes float32 float16 [bfloat16]] [--seeds 0 [1 2]] [--no-eval] [--work DIR]

Bytes are what the ServerApp logs per site and round (``bytes_up``: the payload of the reply's
ArrayRecord as Flower carries it); the model size is that of the final checkpoint's three groups in
float32. Phase-aware exchange means a site uploads only what its phase trains: the predictor in warmup
and finalization, encoder + predictor in joint/align/sync, never the target encoder (the server owns the
EMA). ``transport-dtype = float16`` (the default) sends the round's update (trained − received) in
float16, ``bfloat16`` in bfloat16, ``float32`` the weights themselves. For every seed, every dtype runs with
that seed, the same data and schedule; the final checkpoints of a seed are evaluated side by side
(`clin-jepa evaluate`, linear probes on held-out stays, no baselines, no bootstrap), and each compact dtype
is compared with float32 of the same seed (paired differences of final loss and mean probe AUROC).
Prints per-phase upload fractions, the loss and AUROC of every run, the paired differences, then, last,
the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from _common import ROOT, check, flower_run, load_average, make_hospitals, run_cli

from clin_jepa.checkpoint import load_checkpoint

DEFAULT = "float16"  # the run config's default transport-dtype (pyproject.toml)


def run(work: Path, sites: list[Path], args: argparse.Namespace, dtype: str, seed: int):
    out = work / f"fl_{dtype}_s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    rc = {"preset": args.preset, "num-rounds": args.rounds, "local-steps": args.local_steps,
          "batch-size": args.batch, "site-configs": ",".join(map(str, sites)), "checkpoint-dir": str(out),
          "synth-if-missing": False, "transport-dtype": dtype, "seed": seed}
    fl = flower_run(work / f"flwr_{dtype}_s{seed}", rc, num_supernodes=len(sites),
                    federation={"init-args-log-to-driver": False})
    check(fl, args.rounds)
    return out, fl.lines


def upload_ratio(out: Path, lines: list[dict]) -> tuple[float, dict[str, float], int]:
    """(mean over rounds of the mean over sites of bytes_up / full model bytes, per-phase mean, full)."""
    weights = load_checkpoint(out / "ckpt.pt").weights
    full = sum(t.numel() * 4 for group in weights.values() for t in group.values())
    per_round, by_phase = [], defaultdict(list)
    for ln in lines[1:]:
        ups = [s["bytes_up"] for s in ln["sites"].values() if s.get("status") == "ok"]
        r = sum(ups) / len(ups) / full
        per_round.append(r)
        by_phase[ln["phase"]].append(r)
    return sum(per_round) / len(per_round), {p: sum(v) / len(v) for p, v in by_phase.items()}, full


def paired(values: dict[tuple[str, int], float], dtype: str, seeds: list[int]) -> str:
    diffs = [values[dtype, s] - values["float32", s] for s in seeds]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    return (f"{statistics.mean(diffs):+.4f} (sd {sd:.4f}; per seed "
            + ", ".join(f"{d:+.4f}" for d in diffs) + ")")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"],
                    choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-eval", action="store_true", help="skip the probe evaluation")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    dtypes = ["float32", *[d for d in args.dtypes if d != "float32"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        sites = make_hospitals(work / "hospitals", 3, args.patients)
        print(f"3 sites, {args.rounds} rounds x {args.local_steps} local steps, batch {args.batch}, "
              f"preset {args.preset}, dtypes {dtypes}, seeds {args.seeds}; {load_average()}")
        ratio, loss, auroc, outs = {}, {}, {}, {}
        for seed in args.seeds:
            for dtype in dtypes:
                out, lines = run(work, sites, args, dtype, seed)
                ratio[dtype, seed], phases, full = upload_ratio(out, lines)
                loss[dtype, seed] = lines[-1]["aggregate"].get("loss", float("nan"))
                outs[dtype, seed] = out
                print(f"seed {seed} {dtype}: full model {full:,} B; upload/full by phase "
                      + ", ".join(f"{p} {v:.3f}" for p, v in phases.items())
                      + f"; final round loss {loss[dtype, seed]:.4f}; {load_average()}", flush=True)
            if not args.no_eval:
                report = work / f"eval_s{seed}"
                shutil.rmtree(report, ignore_errors=True)
                ckpts = {d: outs[d, seed] / "ckpt.pt" for d in dtypes}
                run_cli(["evaluate", *map(str, ckpts.values()), "--sites", *map(str, sites), "--out",
                         str(report), "--bootstrap", "0", "--no-baselines", "--quiet", "--seed", str(seed),
                         "--labels", *(f"{d}={c}" for d, c in ckpts.items())])
                metrics = json.loads((report / "metrics.json").read_text())["models"]
                for d in dtypes:
                    auroc[d, seed] = metrics[d]["probes"]["mean_auroc"]
                print(f"seed {seed} mean probe AUROC (held-out): "
                      + ", ".join(f"{d} {auroc[d, seed]:.3f}" for d in dtypes), flush=True)
        for d in dtypes[1:]:
            print(f"{d} - float32, paired over seeds {args.seeds}: final loss {paired(loss, d, args.seeds)}"
                  + (f"; mean probe AUROC {paired(auroc, d, args.seeds)}" if auroc else ""))
        print(load_average())
        means = {d: statistics.mean(ratio[d, s] for s in args.seeds) for d in dtypes}
        default = (f"; default transport ({DEFAULT}) {means[DEFAULT]:.3f} (goal <= 0.4)"
                   if DEFAULT in means else "")
        print("ratio bytes up per site per round / full fp32 model (E+Ē+P), over the curriculum: "
              + ", ".join(f"{d} {means[d]:.3f}" for d in dtypes) + default)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
