"""Communication: bytes each site uploads per round ÷ the full fp32 model (E + Ē + P), averaged over the
curriculum, for float32 and float16 transport, with the effect of float16 on loss and probe AUROC.

    python bench/comm.py [--rounds 10] [--local-steps 10] [--batch 16] [--preset tiny] [--patients 200]
                         [--no-eval] [--work DIR]

Bytes are what the ServerApp logs per site and round (``bytes_up``: the payload of the reply's
ArrayRecord as Flower carries it); the model size is that of the final checkpoint's three groups in
float32. Phase-aware exchange means a site uploads only what its phase trains: the predictor in warmup
and finalization, encoder + predictor in joint/align/sync, never the target encoder (the server owns the
EMA). ``transport-dtype = float16`` sends the round's update (trained − received) in float16. Both runs
use the same seed, data and schedule; the final checkpoints are then evaluated side by side
(`clin-jepa evaluate`, linear probes on held-out stays, no baselines, no bootstrap).
Prints per-phase upload fractions, the loss and AUROC of both runs, then, last, the two ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from _common import ROOT, check, flower_run, load_average, make_hospitals, run_cli

from clin_jepa.checkpoint import load_checkpoint


def run(work: Path, sites: list[Path], args: argparse.Namespace, dtype: str):
    out = work / f"fl_{dtype}"
    shutil.rmtree(out, ignore_errors=True)
    rc = {"preset": args.preset, "num-rounds": args.rounds, "local-steps": args.local_steps,
          "batch-size": args.batch, "site-configs": ",".join(map(str, sites)), "checkpoint-dir": str(out),
          "synth-if-missing": False, "transport-dtype": dtype}
    fl = flower_run(work / f"flwr_{dtype}", rc, num_supernodes=len(sites))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--no-eval", action="store_true", help="skip the probe evaluation of both runs")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        sites = make_hospitals(work / "hospitals", 3, args.patients)
        print(f"3 sites, {args.rounds} rounds x {args.local_steps} local steps, batch {args.batch}, "
              f"preset {args.preset}; {load_average()}")
        results = {}
        for dtype in ("float32", "float16"):
            out, lines = run(work, sites, args, dtype)
            ratio, phases, full = upload_ratio(out, lines)
            last = lines[-1]["aggregate"].get("loss", float("nan"))
            results[dtype] = (out, ratio, last)
            print(f"{dtype}: full model {full:,} B; upload/full by phase "
                  + ", ".join(f"{p} {v:.3f}" for p, v in phases.items())
                  + f"; final round loss {last:.4f}", flush=True)
        if not args.no_eval:
            ckpts = [str(results[d][0] / "ckpt.pt") for d in results]
            report = work / "eval"
            shutil.rmtree(report, ignore_errors=True)
            run_cli(["evaluate", *ckpts, "--sites", *map(str, sites), "--out", str(report),
                     "--bootstrap", "0", "--no-baselines", "--quiet", "--labels",
                     *(f"{d}={results[d][0] / 'ckpt.pt'}" for d in results)])
            metrics = json.loads((report / "metrics.json").read_text())["models"]
            print("mean probe AUROC (held-out): " + ", ".join(
                f"{d} {metrics[d]['probes']['mean_auroc']:.3f}" for d in results)
                + "; drift change: " + ", ".join(
                f"{d} {metrics[d]['drift']['relative_change']:+.3f}" for d in results))
        print(load_average())
        print(f"ratio bytes up per site per round / full fp32 model (E+Ē+P), over the curriculum: "
              f"float32 {results['float32'][1]:.3f}, float16 {results['float16'][1]:.3f} (goal <= 0.4)")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
