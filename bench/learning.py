"""The learning benchmark: does the backbone learn? (DESIGN §8; judge of every model change, issue 12).

    nice -n 10 .venv/bin/python bench/learning.py --out runs/learning
        [--sites 3] [--patients 1000] [--seeds 0 1 2] [--steps 720] [--preset wide] [--batch-size 32]
        [--models curriculum naive federated untrained local] [--no-federated] [--no-local]
        [--local-seeds 1] [--federated-seeds 0] [--train-args "--set loss.obs_weight=0"]
        [--variant NAME="ARGS" ...] [--run-config "key=value ..."] [--jobs 2]

1. ``clin-jepa synth``: ``--sites`` hospitals × ``--patients`` (reused when OUT/data already holds them).
2. Per seed S (``--seeds``), ``clin-jepa train`` with one budget (steps × batch, preset): ``curriculum@S``
   (centralized, pooled), ``naive@S``, ``untrained@S`` (``--steps 0``: the initial weights of seed S, the
   paired control), each ``--variant NAME`` as ``NAME@S`` (curriculum + its flags, with its own
   ``untrained-NAME@S``), and ``local-<site>@S`` (curriculum on one site alone, its own bins) for the
   first ``--local-seeds`` seeds. At most ``--jobs`` runs at once, one torch thread each.
   ``--train-args`` go to every centralized run (to judge a variant as the whole benchmark).
3. ``federated@S`` under ``flwr run`` on a private SuperLink, rounds × local steps × sites = steps
   (``--run-config`` adds run-config keys; of the train flags only the objective reaches it, ``--set
   loss.*`` and ``--rollout-steps`` as ``loss-*`` keys), after step 2, without in-run
   evaluation rounds (``eval-every = -1`` unless ``--run-config`` says otherwise). Run beside the
   centralized runs they over-subscribed the two cores (a `wide` curriculum run took 992 s at load 4
   against 358 s alone) for no clear gain, and a SIGTERM then orphaned the simulation (signal handlers
   belong to the main thread).
4. ``clin-jepa evaluate`` once per discretization (sites tokenized once per group, ``--jobs`` groups at
   once): the pooled group with the hidden ground truth and the baselines (last-value LR; GRU per seed =
   its init seed).
5. Prints one table (mean ± sd across seeds) and PASS/FAIL per criterion; writes OUT/learning.json
   (schema in docs/evaluation.md) and OUT/learning.md. Finished runs are reused when rerun
   (a checkpoint that reached its step count, or its rounds).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    TrainJob,
    evaluate_benchmark,
    load_average,
    run_arguments,
    run_federated,
    synth_sites,
    train_all,
    write_outputs,
)
from _learning_table import baselines_of, criteria, runs_of, table, verdicts  # noqa: E402

MODELS = ("curriculum", "naive", "federated", "untrained", "local")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_arguments(p, out="runs/learning", patients=1000, steps=720)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--no-federated", action="store_true")
    p.add_argument("--local-seeds", type=int, default=1,
                   help="local-only runs for the first N seeds (budget: 3 sites x seeds runs)")
    p.add_argument("--federated-seeds", type=int, default=0,
                   help="federated runs for the first N seeds only (0 = every seed)")
    p.add_argument("--train-args", default="", help="extra `clin-jepa train` flags for every run")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="extra model NAME: curriculum with these train flags (repeatable)")
    p.add_argument("--run-config", default="", help="extra federated run-config, 'key=value ...'")
    p.add_argument("--nice", type=int, default=10, help="niceness of this benchmark and its children")
    args = p.parse_args(argv)
    models = set(args.models) - ({"federated"} if args.no_federated else set()) - (
        {"local"} if args.no_local else set())
    args.models = [m for m in MODELS if m in models]
    args.variants = dict(_variant(v, p) for v in args.variant)
    return args


def _variant(item: str, p: argparse.ArgumentParser) -> tuple[str, tuple[str, ...]]:
    name, sep, flags = item.partition("=")
    if not sep or not name or "@" in name or name in MODELS:
        p.error(f"--variant {item!r}: expected NAME=ARGS with a new NAME without '@'")
    return name, tuple(shlex.split(flags))


def plan(args: argparse.Namespace, configs: list[Path]) -> list[TrainJob]:
    """Every centralized run of the benchmark, paired controls included."""
    runs, common, jobs = args.out / "runs", tuple(shlex.split(args.train_args)), []
    for s in args.seeds:
        def job(label: str, sites: list[Path] = configs, steps: int = args.steps, mode: str = "curriculum",
                extra: tuple[str, ...] = (), seed: int = s) -> TrainJob:
            return TrainJob(f"{label}@{seed}", tuple(sites), runs / f"{label}@{seed}", steps, seed, mode,
                            common + extra)

        if "untrained" in args.models:
            jobs.append(job("untrained", steps=0))
        for mode in ("curriculum", "naive"):
            if mode in args.models:
                jobs.append(job(mode, mode=mode))
        for name, flags in args.variants.items():
            jobs += [job(name, extra=flags), job(f"untrained-{name}", steps=0, extra=flags)]
        if "local" in args.models and s in args.seeds[: args.local_seeds]:
            jobs += [job(f"local-{c.stem}", sites=[c]) for c in configs]
    return jobs


def run_config(text: str) -> dict[str, object]:
    """``--run-config`` as run-config values: each ``key=value`` read as a TOML value (``-1``, ``0.5``,
    ``true``, ``"x"``) as `flwr run --run-config` reads it, else kept as text. The benchmark's own default,
    ``eval-every = -1``, comes first: evaluation rounds only read the model (the weights equal those of a run
    without them, tests/test_federated_eval_flower.py) and every federated run is evaluated afterwards like
    the centralized ones; they took ~47 s of a 246 s run."""
    out: dict[str, object] = {"eval-every": -1}
    for item in shlex.split(text):
        key, _, value = item.partition("=")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def train_loss_keys(train_args: str) -> dict[str, object]:
    """The objective in ``--train-args`` (``--set loss.<field>=V``, ``--rollout-steps``) as the federated
    run's ``loss-<field>`` keys, so the federated run trains what its centralized twins train."""
    from clin_jepa.commands.train import parse_overrides

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--rollout-steps", type=int)
    known, _ = p.parse_known_args(shlex.split(train_args))
    loss = parse_overrides([o for o in known.overrides if o.startswith("loss.")])["loss"]
    if known.rollout_steps is not None:
        loss["rollout_steps"] = known.rollout_steps
    return {f"loss-{k.replace('_', '-')}": v for k, v in loss.items()}


def federated(args: argparse.Namespace, configs: list[Path]) -> dict[str, Path]:
    extra = {**train_loss_keys(args.train_args), **run_config(args.run_config)}
    return {f"federated@{s}": run_federated(args.out / "runs" / f"federated@{s}", configs, args.steps,
                                            args.local_steps, args.preset, s, args.batch_size,
                                            args.out / "logs", args.federated_timeout, extra)
            for s in args.seeds[: args.federated_seeds or len(args.seeds)]}


def baseline_task_max(merged: dict) -> float | None:
    vals = [t["auroc"] for b in merged["baselines"].values() for t in b["probes"]["tasks"].values()
            if t.get("auroc") is not None]
    return max(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    os.nice(max(0, args.nice))  # every child (training, Flower, evaluation) inherits it
    start = time.perf_counter()
    print(f"learning benchmark: {load_average()}", flush=True)
    configs = synth_sites(args.out / "data", args.sites, args.patients, args.data_seed)
    logs = args.out / "logs"
    ckpts = train_all(plan(args, configs), args.preset, args.batch_size, args.device, logs, args.jobs)
    if "federated" in args.models:
        ckpts.update(federated(args, configs))
    first = next((k for k in ckpts if not k.startswith("local-")), next(iter(ckpts)))
    merged = evaluate_benchmark(args, configs, ckpts, first)  # the pooled discretization gets the baselines
    runs = runs_of(merged["models"])
    baselines = baselines_of(merged["baselines"], args.seeds)
    crit = criteria(runs, baselines, baseline_task_max(merged))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings.update(load=load_average(), wall_s=round(time.perf_counter() - start),
                    n_stays=merged["data"]["n_stays"], reports=merged["reports"])
    result = {"settings": settings, "runs": runs, "baselines": baselines, "criteria": crit}
    text = (f"# Learning benchmark\n\n{args.sites} sites × {args.patients} patients, {args.steps} steps × "
            f"batch {args.batch_size}, preset {args.preset}, seeds {args.seeds}; held-out stays "
            f"{merged['data']['n_stays']['held_out']}; {settings['load']}; {settings['wall_s']} s.\n\n"
            + table(runs, baselines) + "\n\n## Criteria\n\n```\n" + verdicts(crit) + "\n```\n")
    write_outputs(args.out, "learning", result, text)
    print(f"total {settings['wall_s']} s, {load_average()} -> {args.out / 'learning.json'}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
