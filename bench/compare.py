"""Curriculum vs ablations vs local-only vs federated on the synthetic hospitals, in one comparison.

    .venv/bin/python bench/compare.py [--out runs/compare] [--steps 300] [--preset tiny] [--patients 300]
        [--batch-size 32] [--jobs 2] [--federated CKPT] [--run-federated] [--bootstrap 200]

1. ``clin-jepa synth`` writes the hospitals (skipped when OUT/data already holds them).
2. ``clin-jepa train`` runs with **matched budgets** — the same optimizer steps, batch size, preset and
   seed, so every model sees the same number of stays: ``pooled`` (curriculum on all sites), the
   ablations ``naive``, ``frozen-encoder``, ``no-ema`` (pooled), and ``local-<site>`` (curriculum on
   one site's data alone, with that site's own quantile bins, as a hospital training alone would).
   A run whose ``ckpt.pt`` already reached its step count is reused.
3. Federated: ``--federated CKPT`` adds an existing checkpoint; ``--run-federated`` runs ``flwr run .``
   on a private local SuperLink with rounds × local-steps × sites = steps (the same stays seen as by
   each centralized run; the curriculum's phases then follow rounds).
   An ``untrained`` control (random weights, pooled's config and bins) shows what training adds.
4. ``clin-jepa evaluate`` once per discretization (checkpoints tokenized alike share a report; the
   baselines run with the first group), all on the pooled held-out stays of every site; then one
   ``OUT/comparison.md`` / ``comparison.json`` table with all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clin_jepa.cli"]
ABLATIONS = ("naive", "frozen-encoder", "no-ema")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/compare", type=Path)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--patients", type=int, default=300, help="subjects per synthetic hospital")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every centralized run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel (one torch thread each)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--gru-epochs", type=int, default=30)
    p.add_argument("--federated", type=Path, help="an existing federated ckpt.pt to include")
    p.add_argument("--run-federated", action="store_true", help="also train one with `flwr run .`")
    p.add_argument("--federated-timeout", type=float, default=3600, help="seconds for the Flower run")
    p.add_argument("--local-steps", type=int, default=10, help="per-site steps per round (--run-federated)")
    p.add_argument("--no-local", action="store_true", help="skip the local-only runs")
    return p.parse_args(argv)


def sh(cmd, log: Path | None = None, env=None) -> None:
    """Run a command; its output goes to ``log`` (or the console); a failure stops the benchmark."""
    print("$", " ".join(map(str, cmd)), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if log is None:
        subprocess.run(list(map(str, cmd)), check=True, cwd=ROOT, env=env)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        res = subprocess.run(list(map(str, cmd)), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if res.returncode:
        tail = log.read_text()[-3000:]
        sys.exit(f"failed ({res.returncode}): {' '.join(map(str, cmd))}\n--- {log} ---\n{tail}")


def synth(args) -> list[Path]:
    data = args.out / "data"
    configs = sorted(data.glob("*.yaml"))
    if len(configs) != args.sites:
        sh([*CLI, "synth", "--out", data, "--sites", args.sites, "--patients", args.patients,
            "--seed", args.seed, "--force"])
        configs = sorted(data.glob("*.yaml"))
    return configs


def finished(run: Path, steps: int) -> bool:
    """True when ``run/ckpt.pt`` exists and its last metrics record reached ``steps``."""
    metrics = run / "metrics.jsonl"
    if not (run / "ckpt.pt").is_file() or not metrics.is_file():
        return False
    lines = metrics.read_text().strip().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("step") == steps


def train_runs(args, configs: list[Path]) -> dict[str, Path]:
    """label -> checkpoint of every centralized run (trained here unless already finished)."""
    plans = {"pooled": ("curriculum", configs)}
    plans.update({mode: (mode, configs) for mode in ABLATIONS})
    if not args.no_local:
        plans.update({f"local-{c.stem}": ("curriculum", [c]) for c in configs})

    def one(item):
        label, (mode, sites) = item
        run = args.out / "runs" / label
        if finished(run, args.steps):
            print(f"reuse {run}", flush=True)
        else:
            shutil.rmtree(run, ignore_errors=True)
            start = time.perf_counter()
            sh([*CLI, "train", "--sites", *sites, "--out", run, "--mode", mode, "--steps", args.steps,
                "--batch-size", args.batch_size, "--preset", args.preset, "--seed", args.seed,
                "--device", args.device, "--log-every", max(1, args.steps // 10), "--no-progress"],
               log=args.out / "logs" / f"train-{label}.log")
            print(f"trained {label} in {time.perf_counter() - start:.0f} s", flush=True)
        return label, run / "ckpt.pt"

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return dict(pool.map(one, plans.items()))


def run_federated(args, configs: list[Path]) -> Path:
    """Simulate the federation on a private local SuperLink (``clin_jepa.localrun``), matched budget."""
    from clin_jepa.localrun import LocalFlower

    rounds = max(1, round(args.steps / (args.local_steps * len(configs))))
    ckdir = (args.out / "runs" / "federated").resolve()
    if finished_federated(ckdir, rounds):
        print(f"reuse {ckdir}", flush=True)
        return ckdir / "ckpt.pt"
    shutil.rmtree(ckdir, ignore_errors=True)
    config = {"num-rounds": rounds, "local-steps": args.local_steps, "preset": args.preset, "seed": args.seed,
              "batch-size": args.batch_size, "site-configs": ",".join(str(c.resolve()) for c in configs),
              "checkpoint-dir": str(ckdir), "synth-if-missing": False}
    log = args.out / "logs" / "federated.log"
    print(f"$ flwr run . ({rounds} rounds x {args.local_steps} steps x {len(configs)} sites)", flush=True)
    start = time.perf_counter()
    with LocalFlower(args.out / "flwr_home", ROOT, args.out / "logs" / "superlink.log") as fl:
        res = fl.run(ROOT, config, num_supernodes=len(configs), timeout=args.federated_timeout)
    log.write_text(res.stdout)
    if res.returncode or not (ckdir / "ckpt.pt").is_file():
        sys.exit(f"federated run failed ({res.returncode}); see {log}:\n{res.stdout[-3000:]}")
    print(f"trained federated in {time.perf_counter() - start:.0f} s", flush=True)
    return ckdir / "ckpt.pt"


def finished_federated(ckdir: Path, rounds: int) -> bool:
    from clin_jepa.checkpoint import load_checkpoint

    return (ckdir / "ckpt.pt").is_file() and load_checkpoint(ckdir / "ckpt.pt").round >= rounds


def untrained_control(args, like: Path) -> Path:
    """A randomly initialized model with ``like``'s config and discretization: what training adds."""
    import torch

    from clin_jepa.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from clin_jepa.models import ClinJEPA

    ref = load_checkpoint(like)
    torch.manual_seed(args.seed)
    path = args.out / "runs" / "untrained" / "ckpt.pt"
    save_checkpoint(path, Checkpoint.from_model(ClinJEPA(ref.model_config), discretization=ref.discretization,
                                                tasks=ref.tasks, curriculum={"mode": "untrained"}))
    return path


def fingerprint(ckpt: Path) -> str:
    from clin_jepa.checkpoint import load_checkpoint

    return load_checkpoint(ckpt).load_discretization().fingerprint()


def evaluate_groups(args, configs: list[Path], ckpts: dict[str, Path]) -> dict:
    """One `clin-jepa evaluate` per discretization; returns the merged rows keyed by label."""
    groups: dict[str, list[str]] = {}
    for label, ck in ckpts.items():
        groups.setdefault(fingerprint(ck), []).append(label)
    merged = {"models": {}, "baselines": {}, "reports": []}
    for i, labels in enumerate(groups.values()):
        out = args.out / "reports" / ("main" if i == 0 else labels[0])
        cmd = [*CLI, "evaluate", *(ckpts[lb] for lb in labels), "--sites", *configs, "--out", out,
               "--labels", *(f"{lb}={ckpts[lb]}" for lb in labels), "--bootstrap", args.bootstrap,
               "--gru-epochs", args.gru_epochs, "--seed", args.seed, "--device", args.device, "--quiet"]
        if i > 0:
            cmd.append("--no-baselines")
        sh(cmd, log=args.out / "logs" / f"evaluate-{i}.log")
        metrics = json.loads((out / "metrics.json").read_text())
        merged["models"].update(metrics["models"])
        merged["baselines"].update(metrics["baselines"])
        merged["reports"].append(str(out))
        merged.setdefault("data", metrics["data"])
    return merged


def _f(x, pct=False):
    if x is None:
        return "–"
    return f"{100 * x:+.1f} %" if pct else f"{x:.3f}"


def table(merged: dict) -> str:
    tasks = merged["data"]["tasks"]
    head = ["model", "drift change 1–6 h → 43–48 h", "drift L1 1–6 h / 43–48 h", "displacement ratio",
            "mean AUROC", *tasks]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    rows = [(k, v["drift"]["relative_change"], f"{_f(v['drift']['early'])} / {_f(v['drift']['late'])}",
             v["geometry"]["displacement_per_task"], v["probes"]) for k, v in merged["models"].items()]
    rows += [(k, None, "–", None, v["probes"]) for k, v in merged["baselines"].items()]
    for label, drift, levels, ratio, probes in rows:
        per_task = [_f(probes["tasks"][t]["auroc"]) for t in tasks]
        cells = [label, _f(drift, True), levels, _f(ratio), _f(probes["mean_auroc"]), *per_task]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    start = time.perf_counter()
    configs = synth(args)
    ckpts = train_runs(args, configs)
    ckpts["untrained"] = untrained_control(args, ckpts["pooled"])
    if args.run_federated:
        ckpts["federated"] = run_federated(args, configs)
    if args.federated:
        ckpts["federated"] = args.federated.resolve()
    merged = evaluate_groups(args, configs, ckpts)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    md = (f"# Comparison on {args.sites} synthetic hospitals\n\n"
          f"Budget per centralized run: {args.steps} steps × batch {args.batch_size}, preset {args.preset}, "
          f"seed {args.seed}; {args.patients} subjects per hospital. Evaluated on the held-out stays of all "
          f"sites ({merged['data']['n_stays']}). Reports: {', '.join(merged['reports'])}.\n\n"
          + table(merged) + "\n")
    from clin_jepa.io import atomic_write_text

    atomic_write_text(args.out / "comparison.md", md)
    atomic_write_text(args.out / "comparison.json", json.dumps({"settings": settings, **merged}, indent=2))
    print(md)
    print(f"total {time.perf_counter() - start:.0f} s -> {args.out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
