"""Labels from ACES task configs (``es-aces``), run on a site's harmonized MEDS view.

An ACES config names predicates by code; on the harmonized view (:mod:`clin_jepa.data.harmonized_view`)
those codes are the catalog's concept names in canonical units, so one config serves every site of a
federation. ACES is driven through its Python API (config loader, predicate builder, query), one view
shard at a time: a subject lives in one shard, so per-shard queries give the same rows as one query over
the whole view. Configs shipped with the package: ``clin_jepa/tasks/aces/*.yaml``, chosen by name.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import meds
import pyarrow as pa

from clin_jepa.data.meds import shard_paths
from clin_jepa.errors import ConfigError

INSTALL_HINT = "ACES is an optional dependency: pip install 'clin-jepa[aces]' (es-aces)"


def packaged_aces_tasks() -> dict[str, Path]:
    """``name -> path`` of the ACES task configs shipped in ``clin_jepa/tasks/aces``."""
    root = Path(str(files("clin_jepa").joinpath("tasks", "aces")))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve_aces_task(spec: str) -> Path:
    """A task config path, or the name of a packaged one; ConfigError naming both choices otherwise."""
    path = Path(spec)
    if path.is_file():
        return path
    packaged = packaged_aces_tasks()
    if spec in packaged:
        return packaged[spec]
    raise ConfigError(f"--aces: {spec!r} is neither a task config file nor a packaged ACES task; "
                      f"packaged: {', '.join(packaged)}")


def _aces():  # noqa: ANN202 - returns the three ACES modules the run needs
    try:
        from aces import config, predicates, query
        from aces.run import get_and_validate_label_schema
    except ImportError:
        raise ConfigError(f"--aces: {INSTALL_HINT}") from None
    logging.getLogger("aces").setLevel(logging.ERROR)  # its INFO/WARNING lines per shard are noise here
    return config, predicates, query, get_and_validate_label_schema


def load_aces_task(path: Path):  # noqa: ANN201 - an aces.config.TaskExtractorConfig
    """Parse one ACES task config; any problem ACES finds is a ConfigError naming the file."""
    config, *_ = _aces()
    try:
        return config.TaskExtractorConfig.load(config_path=path)
    except Exception as exc:  # noqa: BLE001 - ACES raises ValueError, KeyError, TypeError, YAML errors
        raise ConfigError(f"{path}: not a usable ACES task config ({type(exc).__name__}: "
                          f"{str(exc)[:300]})") from None


def aces_labels(task_path: Path, view_root: Path) -> pa.Table:
    """MEDS label rows (``meds.LabelSchema``) of one ACES task over a harmonized view."""
    _, predicates, query, to_label_schema = _aces()
    renames = {"index_timestamp": meds.LabelSchema.prediction_time_name,
               "label": meds.LabelSchema.boolean_value_name}
    parts = []
    for shard in shard_paths(view_root):
        # a fresh config per query: ACES's query moves offsets inside the config's window tree, so a
        # reused config shifts every later shard's windows (measured: one day per earlier shard)
        task = load_aces_task(task_path)
        try:
            found = query.query(task, predicates.get_predicates_df(task, SimpleNamespace(
                standard="meds", path=str(shard))))
        except (ValueError, KeyError, TypeError) as exc:  # e.g. a predicate on a column the view lacks
            raise ConfigError(f"{task_path}: ACES could not run this task on the harmonized view "
                              f"({type(exc).__name__}: {str(exc)[:300]})") from None
        if found.height == 0:
            continue
        if "index_timestamp" not in found.columns or "label" not in found.columns:
            raise ConfigError(f"{task_path}: the task needs a window with `label:` and one with "
                              "`index_timestamp:` (the prediction time) to give MEDS labels")
        found = found.rename(renames).select("subject_id", *renames.values())
        parts.append(to_label_schema(found))
    if not parts:
        return meds.LabelSchema.align(pa.table({"subject_id": pa.array([], pa.int64())}))
    return pa.concat_tables(parts)
