"""``clin-jepa labels --aces TASK --sites A.yaml [B.yaml ...] --out DIR``: MEDS label files from ACES.

Each site is validated, its harmonized MEDS view (canonical codes and units, clin-jepa's stays) is written
to a temporary folder (or ``--view``), and every ACES task config runs on it; ``DIR/<task>.parquet`` gets
the rows of all sites (``meds.LabelSchema``), ready for ``clin-jepa evaluate --label-files DIR``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clin_jepa.errors import ConfigError, DataValidationError

HELP = "write MEDS label files from ACES task configs run on the sites' harmonized MEDS view"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clin_jepa.data.concepts import add_catalog_argument

    parser.add_argument("--aces", nargs="+", required=True, metavar="TASK",
                        help="ACES task config YAML(s), or names of the packaged ones in "
                             "clin_jepa/tasks/aces (in_icu_mortality, meds_dev_elevated_creatinine, "
                             "meds_dev_hyponatremia); each gives DIR/<file stem>.parquet")
    parser.add_argument("--sites", nargs="+", required=True, metavar="SITE_YAML", help="site config file(s)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the label files; must be empty or absent unless --force")
    parser.add_argument("--view", default="", metavar="DIR",
                        help="keep the harmonized MEDS view in DIR/<site>/ (empty or absent) instead of a "
                             "temporary folder that is deleted afterwards")
    parser.add_argument("--force", action="store_true", help="replace the label files in a non-empty --out")
    add_catalog_argument(parser)


def _empty_or_absent(path: Path, flag: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{flag}: {path} exists and is not an empty folder; choose another folder"
                          + (" or pass --force" if flag == "--out" else ""))


def _site_labels(config: str, tasks: list[Path], view_root: Path, concepts: str | None) -> list[pa.Table]:
    from clin_jepa.config import load_site_config
    from clin_jepa.data.aces_labels import aces_labels
    from clin_jepa.data.concepts import check_site_catalog, use_catalog
    from clin_jepa.data.harmonized_view import write_harmonized_view
    from clin_jepa.data.tasks import load_tasks
    from clin_jepa.data.validate import validate_site

    cfg = load_site_config(config)
    use_catalog(concepts or cfg.concept_catalog)
    check_site_catalog(cfg.site, cfg.concept_catalog)
    validate_site(cfg, load_tasks(names=[]))  # the view is only as good as the data: same checks first
    view = view_root / cfg.site
    if view.exists():  # the view folder started empty: another site of this call has the same name
        raise ConfigError(f"{config}: site name {cfg.site!r} is given twice; sites need their own names")
    write_harmonized_view(cfg, view)
    return [aces_labels(task, view) for task in tasks]


def run(args: argparse.Namespace) -> int:
    from clin_jepa.data.aces_labels import load_aces_task, resolve_aces_task
    from clin_jepa.io import atomic_write_bytes

    tasks = [resolve_aces_task(spec) for spec in args.aces]
    stems = [t.stem for t in tasks]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"--aces: two task configs share a file name ({stems}); each names its label file")
    for task in tasks:
        load_aces_task(task)  # a broken config stops the command before any site is read
    out = Path(args.out)
    if not args.force:
        _empty_or_absent(out, "--out")
    if args.view:
        _empty_or_absent(Path(args.view), "--view")
    per_site: list[list[pa.Table]] = []
    subjects: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="clin-jepa-view-") as tmp:
        for config in args.sites:
            per_site.append(_site_labels(config, tasks, Path(args.view or tmp), args.concepts))
            ids = np.unique(np.concatenate([t.column("subject_id").to_numpy() for t in per_site[-1]]))
            clash = {name: np.intersect1d(ids, other)[:5].tolist() for name, other in subjects.items()
                     if len(np.intersect1d(ids, other))}
            if clash:  # label files are keyed by (subject_id, prediction_time) across all sites
                raise DataValidationError(config, [f"subject_id(s) also labelled at {name}, e.g. {ids_}"
                                                   for name, ids_ in clash.items()])
            subjects[config] = ids
    for j, task in enumerate(tasks):
        table = pa.concat_tables([site[j] for site in per_site])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = atomic_write_bytes(out / f"{task.stem}.parquet", sink.getvalue().to_pybytes())
        positive = pc.sum(table.column("boolean_value").cast(pa.int64())).as_py() or 0
        print(f"{task.stem}: {table.num_rows} label(s), {positive} positive -> {path}")
    return 0
