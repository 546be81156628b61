"""``clin-jepa evaluate``: drift, geometry, probes and baselines of checkpoints on sites' held-out stays."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from clin_jepa.data.concepts import add_catalog_argument
from clin_jepa.errors import ConfigError

HELP = ("evaluate checkpoint(s) on the sites' held-out stays; writes metrics.json, report.md, report.html "
        "and PNG plots")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint file(s) to compare")
    parser.add_argument("--sites", nargs="+", required=True, metavar="YAML", help="site config file(s)")
    parser.add_argument("--out", required=True, help="report folder (created)")
    parser.add_argument("--labels", nargs="*", default=[], metavar="NAME=CKPT",
                        help="display names for checkpoints (default: file name, or folder for ckpt.pt)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for CIs (0 = none)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, PCA and GRU baseline")
    parser.add_argument("--no-baselines", action="store_true", help="skip the last-value LR and GRU")
    parser.add_argument("--gru-epochs", type=int, default=None,
                        help="epochs of the supervised GRU baseline (default: GRUSettings.epochs, 60)")
    parser.add_argument("--gru-seeds", type=int, nargs="+", default=[], metavar="S",
                        help="train the GRU once per init seed (reported as gru@S); default one, --seed")
    parser.add_argument("--ground-truth", action="store_true",
                        help="also form cohorts from each site's <data path>/ground_truth.parquet (written "
                             "by `clin-jepa synth`; training never reads it)")
    parser.add_argument("--public-key", metavar="PEM",
                        help="verify each CKPT.sig with this coordinator public key before loading")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--tasks", nargs="+", metavar="NAME", default=(),
                        help="probe these tasks, by name (default: the 8 packaged ICU tasks; meds_dev_* are "
                             "the MEDS-DEV threshold variants)")
    parser.add_argument("--label-files", metavar="DIR", default="",
                        help="MEDS label files DIR/<task>.parquet (subject_id, prediction_time = stay "
                             "start + --context hours, boolean_value), e.g. from ACES, used instead of the "
                             "task definitions")
    parser.add_argument("--context", type=int, default=24, metavar="H",
                        help="prediction time in hours after the stay start: probes read hours < H "
                             "(default 24)")
    parser.add_argument("--horizon", type=int, default=48, metavar="H",
                        help="hours after the prediction time that rollout drift and displacement cover "
                             "(default 48)")
    add_catalog_argument(parser)


def parse_labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--labels: expected NAME=CKPT, got {item!r}")
        out[path] = name
    return out


def run(args: argparse.Namespace) -> int:
    from clin_jepa.data.concepts import use_catalog
    from clin_jepa.evaluation.baselines import GRUSettings
    from clin_jepa.evaluation.plots import rollout_verdict
    from clin_jepa.evaluation.report import fmt
    from clin_jepa.evaluation.runner import EvalSettings, evaluate

    use_catalog(args.concepts)
    if (args.bootstrap < 0 or (args.gru_epochs is not None and args.gru_epochs < 1) or args.context < 1
            or args.horizon < 1):
        raise ConfigError("--bootstrap must be >= 0 and --gru-epochs, --context, --horizon >= 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; the report needs a folder")
    if args.public_key:
        # Fail fast (before any data is read or report written), then check again where each checkpoint
        # is loaded, on the very bytes that are decoded.
        from clin_jepa.security.checkpoints import check_context
        from clin_jepa.security.signing import verify_file

        for ckpt in args.checkpoints:
            check_context(Path(ckpt), verify_file(ckpt, args.public_key))
    else:
        # Local simulations write unsigned checkpoints; say so rather than imply a verification happened.
        print("clin-jepa evaluate: warning: checkpoint signatures are NOT verified (no --public-key)",
              file=sys.stderr)
    from clin_jepa.device import resolve_device

    device = str(resolve_device(args.device, "--device"))  # ConfigError, not a CUDA traceback, if absent
    if args.label_files and args.tasks:
        raise ConfigError("give --tasks or --label-files, not both")
    settings = EvalSettings(context=args.context, horizon=args.horizon, tasks=tuple(args.tasks),
                            label_files=args.label_files,
                            bootstrap=args.bootstrap, seed=args.seed, device=device,
                            baselines=not args.no_baselines, gru_seeds=tuple(args.gru_seeds),
                            gru=GRUSettings(seed=args.seed, epochs=args.gru_epochs or GRUSettings.epochs),
                            ground_truth=args.ground_truth)
    with contextlib.ExitStack() as stack:
        if args.public_key:
            from clin_jepa.checkpoint import verified_loads
            from clin_jepa.security.checkpoints import checkpoint_verifier

            stack.enter_context(verified_loads(checkpoint_verifier(args.public_key)))
        metrics = evaluate(args.checkpoints, args.sites, args.out, parse_labels(args.labels), settings,
                           progress=not args.quiet)
    print(f"wrote {args.out}/metrics.json, report.md, report.html, plots, labels/ and predictions/ "
          "(MEDS label files)")
    for label, m in metrics["models"].items():
        d, g, p = m["drift"], m["geometry"], m.get("paired")
        hidden = "" if g["hidden"] is None else f", hidden-cohort {fmt(g['hidden']['ratio'])}"
        paired = "" if not p else f" ({fmt(p['diff'], sign=True)} ± {fmt(p['diff_sd'])} vs {p['untrained']})"
        print(f"  {label}: mean AUROC {fmt(m['probes']['mean_auroc'])}{paired}, displacement per task "
              f"{fmt(g['displacement_per_task'])}{hidden}, drift L1 late {fmt(d['late'])} (copy "
              f"{fmt(d['copy_late'])}; {rollout_verdict(d)})")
    for label, m in metrics["baselines"].items():
        print(f"  {label}: mean AUROC {fmt(m['probes']['mean_auroc'])}")
    return 0
