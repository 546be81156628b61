"""``clin-jepa validate site_configs/X.yaml [more.yaml ...]``: check site configs and their datasets.

Prints a summary per valid site, or every problem of an invalid one; exits 2 if any site failed.
"""

from __future__ import annotations

import argparse
import sys

from clin_jepa.config import SiteConfig, load_site_config
from clin_jepa.data.concepts import add_catalog_argument, check_site_catalog, use_catalog
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.validate import validate_site
from clin_jepa.errors import ClinJepaError

HELP = "check site configs and their MEDS datasets; print a summary or every problem found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="SITE_YAML", help="site config file(s)")
    add_catalog_argument(parser)
    parser.add_argument("--tasks", nargs="+", metavar="NAME", default=None,
                        help="tasks whose positive rates to report, by name (default: the 8 packaged ICU "
                             "tasks; meds_dev_* are the MEDS-DEV threshold variants)")
    parser.add_argument("--suggest", action="store_true",
                        help="also print code_map entries for unmapped codes, proposed from "
                             "metadata/codes.parquet (descriptions, LOINC parent codes, units), as YAML")


def _print_suggestions(cfg: SiteConfig) -> None:
    from clin_jepa.data.concepts import load_concepts
    from clin_jepa.data.suggest import suggest, suggestions_yaml

    units = {c.name: c.unit for c in load_concepts().measurements + load_concepts().treatments}
    print(f"# site {cfg.site}\n" + suggestions_yaml(suggest(cfg), units))


def run(args: argparse.Namespace) -> int:
    tasks = load_tasks(names=args.tasks)
    failed = 0
    for path in args.configs:
        try:
            cfg = load_site_config(path)
            # without --concepts a site is checked against the catalog it agreed to (or the packaged one)
            use_catalog(args.concepts or cfg.concept_catalog)
            check_site_catalog(cfg.site, cfg.concept_catalog)
            if args.suggest:
                _print_suggestions(cfg)
            summary = validate_site(cfg, tasks)
        except ClinJepaError as exc:
            failed += 1
            print(f"{path}: INVALID\n{exc}", file=sys.stderr)  # one paragraph: no blank line
            continue
        print(summary.format() + "\n")
    if failed:
        print(f"clin-jepa validate: {failed} of {len(args.configs)} site config(s) failed", file=sys.stderr)
        return 2
    return 0
