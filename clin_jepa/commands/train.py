"""``clin-jepa train``: centralized training on pooled sites (upper reference) or one site (local-only)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HELP = "Train Clin-JEPA centrally on the pooled train splits of one or more sites (no federation)."

# Settings a resumed run takes from its checkpoint; giving them again with --resume is an error.
RUN_SETTINGS = ("preset", "steps", "mode", "seed", "batch_size", "lr", "log_every", "ckpt_every", "device",
                "rollout_steps", "hours")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clin_jepa.curriculum import MODES
    from clin_jepa.data.concepts import add_catalog_argument
    from clin_jepa.models import PRESETS

    parser.add_argument("--sites", nargs="+", required=True, metavar="YAML",
                        help="site config(s); several are pooled (centralized upper reference), one gives "
                             "the local-only baseline")
    parser.add_argument("--out", metavar="DIR", help="run folder: metrics.jsonl, ckpt.pt, ckpt-step*.pt")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped "
                        "(all settings come from DIR/ckpt.pt)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="model size (default small)")
    parser.add_argument("--steps", type=int, help="total optimizer steps of the curriculum (default 1000); "
                        "0 writes the seeded initial weights (the untrained control of --seed)")
    parser.add_argument("--mode", choices=MODES, help="curriculum (default) or an ablation")
    parser.add_argument("--seed", type=int, help="seed of initialization and batch order (default 0)")
    parser.add_argument("--batch-size", type=int, help="stays per batch (default: first site's "
                        "training.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 6e-3)")
    parser.add_argument("--rollout-steps", type=int, help="k of the k-step rollout loss (default 2)")
    parser.add_argument("--hours", type=int, help="hours per stay window (default 72)")
    parser.add_argument("--log-every", type=int, help="steps between metrics records (default 25)")
    parser.add_argument("--ckpt-every", type=int, help="steps between periodic checkpoints (default: at "
                        "the end only)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"),
                        help="default: first site's training.device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                        help="override one setting of the model (e.g. model.obs_horizons=0), the loss "
                             "(loss.context_mask=0.2) or the curriculum (curriculum.warmup=0.2); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_catalog_argument(parser)
    parser.add_argument("--tracking-uri", default="", metavar="URI",
                        help="MLflow tracking URI (default: a local store in the run folder, "
                             "sqlite:///DIR/mlflow/mlflow.db; 'off' = no tracking)")


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["loss.obs_weight=0", "model.horizons=[3]"]`` -> ``{"loss": {...}, "model": {...}, ...}``; values
    are YAML scalars or lists. Unknown keys are refused later by each config's ``from_dict``."""
    import yaml

    from clin_jepa.errors import ConfigError

    out: dict[str, dict[str, Any]] = {"model": {}, "loss": {}, "curriculum": {}}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in out or not name:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of "
                              f"{sorted(out)} (e.g. --set loss.obs_weight=0)")
        try:
            out[section][name] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not a YAML scalar or list ({exc})") from None
    return out


@contextlib.contextmanager
def _tracker(args: argparse.Namespace, out: Path,
             params: dict[str, Any] | None = None) -> Iterator[Callable[[dict[str, Any]], None]]:
    """MLflow tracking of the run's records (``clin_jepa.tracking``), closed FAILED if training raises."""
    from clin_jepa.tracking import Tracker, centralized_metrics, settings

    warn = lambda text: print(f"clin-jepa train: warning: {text}", file=sys.stderr)  # noqa: E731
    tracker = Tracker(args.tracking_uri, out, str(out.resolve()), f"centralized {out.name}",
                      settings(params or {}), warn=warn)
    status = "FAILED"
    try:
        yield lambda record: tracker.log(*centralized_metrics(record))
        status = "FINISHED"
    finally:
        tracker.close(status)


def run(args: argparse.Namespace) -> int:
    from clin_jepa.config import load_site_config
    from clin_jepa.curriculum import CurriculumConfig
    from clin_jepa.data.concepts import use_catalog
    from clin_jepa.errors import ConfigError
    from clin_jepa.losses import LossConfig
    from clin_jepa.trainer import TrainerConfig, train_centralized

    use_catalog(args.concepts)
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in RUN_SETTINGS if getattr(args, k) is not None]
        if given or args.compile or args.overrides:
            raise ConfigError(f"--resume continues the stored run with its own settings; drop {given}")
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError("--resume DIR writes into DIR; do not give a different --out")
        with _tracker(args, Path(args.resume)) as on_record:
            record = train_centralized(args.sites, args.resume, resume=True, progress=not args.no_progress,
                                       on_record=on_record)
    else:
        if not args.out:
            raise ConfigError("--out DIR is required (or --resume DIR to continue a run)")
        first = load_site_config(args.sites[0])
        sets = parse_overrides(args.overrides)
        # `x if given else default`, never `x or default`: an explicit 0 must reach the checks, not vanish
        given = lambda value, default: default if value is None else value  # noqa: E731
        tcfg = TrainerConfig(
            preset=given(args.preset, "small"), steps=given(args.steps, 1000),
            batch_size=given(args.batch_size, first.batch_size), seed=given(args.seed, 0),
            log_every=given(args.log_every, 25), ckpt_every=given(args.ckpt_every, 0),
            hours=given(args.hours, 72), device=given(args.device, first.device), compile=args.compile,
            loss=LossConfig.from_dict({"rollout_steps": given(args.rollout_steps, 2), **sets["loss"]}),
            model=sets["model"])
        ccfg = CurriculumConfig.from_dict({**CurriculumConfig().to_dict(), "mode": args.mode or "curriculum",
                                           **sets["curriculum"]})
        if args.lr is not None:
            ccfg = dataclasses.replace(ccfg, lr=args.lr, min_lr=min(ccfg.min_lr, args.lr))
        with _tracker(args, Path(args.out), {**tcfg.to_dict(), "curriculum": ccfg.to_dict()}) as on_record:
            record = train_centralized(args.sites, args.out, tcfg, ccfg, progress=not args.no_progress,
                                       on_record=on_record)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
             if k in ("step", "phase", "loss", "loss_step1", "emb_std_mean", "eff_rank", "drift")}
    print(f"done: {shown} -> {Path(args.resume or args.out) / 'ckpt.pt'}")
    return 0
