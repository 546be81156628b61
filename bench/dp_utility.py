"""Privacy vs utility: federated training on the synthetic hospitals under sample-level DP at several ε,
then the mean linear-probe AUROC on each site's held-out stays (``clin-jepa evaluate``, one site at a time).

    python bench/dp_utility.py [--out runs/dp_utility] [--epsilons 1,3,8,inf] [--patients 600]
                               [--rounds 10] [--local-steps 10] [--batch 32] [--preset tiny]

ε = inf trains without DP. Every run uses the same hospitals, schedule and seed (so the same initial
weights); δ = 1e-5. Prints one row per ε with each site's mean probe AUROC (over the tasks with both
classes in train and held-out) and the cumulative ε the sites reported after the last round, and a row
for the untrained initial weights as reference.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from clin_jepa.cli import main as cli
from clin_jepa.localrun import LocalFlower

ROOT = Path(__file__).resolve().parents[1]
SITES = ("hospital_a", "hospital_b", "hospital_c")


def train(flower: LocalFlower, args: argparse.Namespace, eps: float, sites: list[Path], out: Path) -> dict:
    run_config = {"preset": args.preset, "num-rounds": args.rounds, "local-steps": args.local_steps,
                  "batch-size": args.batch, "site-configs": ",".join(map(str, sites)),
                  "checkpoint-dir": str(out), "synth-if-missing": False, "round-timeout": 3000.0,
                  "dp-sample-epsilon": 0.0 if math.isinf(eps) else eps, "dp-sample-delta": 1e-5}
    t0 = time.perf_counter()
    proc = flower.run(ROOT, run_config, num_supernodes=len(sites), timeout=3600)
    if proc.returncode != 0 or not (out / "ckpt.pt").exists():
        raise SystemExit(f"federated run at eps={eps} failed:\n{proc.stdout[-3000:]}")
    last = [ln for ln in map(json.loads, filter(str.strip, (out / "metrics.jsonl").read_text().splitlines()))
            if ln.get("phase") != "evaluate"][-1]
    print(f"eps={eps}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return {s: last["sites"].get(s, {}).get("dp-epsilon") for s in SITES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "dp_utility")
    ap.add_argument("--epsilons", default="1,3,8,inf")
    ap.add_argument("--patients", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    out = args.out.resolve()
    data = out / "sites"
    if not data.exists():
        assert cli(["synth", "--out", str(data), "--sites", "3", "--patients", str(args.patients)]) == 0
    sites = [data / f"{s}.yaml" for s in SITES]
    epsilons = [float(e) for e in args.epsilons.split(",")]
    spent, ckpts = {}, {}
    with LocalFlower(out / "flower_home", ROOT, out / "superlink.log") as flower:
        for eps in epsilons:
            ckpts[eps] = out / f"eps_{eps:g}"
            spent[eps] = train(flower, args, eps, sites, ckpts[eps])
    auroc: dict[float | str, dict[str, float]] = {eps: {} for eps in epsilons}
    for site, path in zip(SITES, sites, strict=True):
        report = out / f"report_{site}"
        # reference: the common initial weights (every run starts from the same seeded model)
        init = ckpts[epsilons[0]] / "round_0000.pt"
        labels = [f"eps_{eps:g}={ckpts[eps] / 'ckpt.pt'}" for eps in epsilons] + [f"init={init}"]
        code = cli(["evaluate", *[str(ckpts[e] / "ckpt.pt") for e in epsilons], str(init),
                    "--sites", str(path), "--out", str(report), "--labels", *labels, "--no-baselines",
                    "--bootstrap", "0", "--quiet"])
        if code != 0:
            raise SystemExit(f"evaluate failed for {site}")
        metrics = json.loads((report / "metrics.json").read_text())
        for label, row in metrics["models"].items():
            key = "init" if label == "init" else float(label.removeprefix("eps_"))
            auroc.setdefault(key, {})[site] = row["probes"]["mean_auroc"]
    print(f"preset={args.preset} rounds={args.rounds} local_steps={args.local_steps} batch={args.batch} "
          f"patients/site={args.patients} delta=1e-5")
    print("target_eps | " + " | ".join(f"{s} AUROC (eps spent)" for s in SITES) + " | mean AUROC")
    for eps in epsilons:
        cells = [f"{auroc[eps][s]:.3f} ({spent[eps][s]:.2f})" if spent[eps][s] is not None
                 else f"{auroc[eps][s]:.3f} (-)" for s in SITES]
        print(f"{eps:>10g} | " + " | ".join(cells) + f" | {sum(auroc[eps].values()) / len(SITES):.3f}")
    print("      init | " + " | ".join(f"{auroc['init'][s]:.3f}" for s in SITES)
          + f" | {sum(auroc['init'].values()) / len(SITES):.3f}   (untrained weights, for reference)")


if __name__ == "__main__":
    main()
