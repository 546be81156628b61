"""Per-stay labels and probe predictions as MEDS label files, written and read.

``labels/<task>.parquet`` follows ``meds.LabelSchema`` (``subject_id``, ``prediction_time``,
``boolean_value``), one row per stay of every split with a defined label;
``predictions/<model>/<task>.parquet`` adds the two columns the ``meds-evaluation`` package reads
(``predicted_boolean_value``, ``predicted_boolean_probability``) for held-out stays. The prediction
time is the stay start plus the evaluation's context hours (the probe reads nothing later).
``clin-jepa evaluate`` writes both beside metrics.json, and reads label files made elsewhere
(``--label-files DIR``: ACES or any MEDS labeler) in place of the packaged task definitions
(:func:`attach_label_files`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clin_jepa.data.harmonize import HOUR_US
from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import DataValidationError

PREDICTION_FIELDS = [pa.field("predicted_boolean_value", pa.bool_()),
                     pa.field("predicted_boolean_probability", pa.float64())]


def _label_fields() -> list[pa.Field]:
    wanted = (meds.LabelSchema.subject_id_name, meds.LabelSchema.prediction_time_name,
              meds.LabelSchema.boolean_value_name)
    return [meds.LabelSchema.schema().field(name) for name in wanted]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def _table(held: SiteTensors, j: int, context_hours: int, prob: np.ndarray | None) -> pa.Table:
    keep = ~np.isnan(held.labels[:, j])
    if prob is not None:
        keep &= ~np.isnan(prob)
    fields = _label_fields() + (PREDICTION_FIELDS if prob is not None else [])
    columns = [pa.array(held.subject_id[keep], pa.int64()),
               pa.array(held.stay_start[keep] + context_hours * HOUR_US, pa.int64()).cast(pa.timestamp("us")),
               pa.array(held.labels[keep, j] > 0.5, pa.bool_())]
    if prob is not None:
        columns += [pa.array(prob[keep] >= 0.5, pa.bool_()), pa.array(prob[keep].astype(np.float64))]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def write_label_files(out_dir: Path, data: SiteTensors, held: SiteTensors, context_hours: int,
                      scores: Mapping[str, np.ndarray | None]) -> list[Path]:
    """Write ``labels/`` and, per model with held-out probabilities ``(n_held, n_tasks)``,
    ``predictions/``; returns the files written."""
    written = []
    for j, task in enumerate(held.tasks):
        targets = [(Path(out_dir) / "labels" / f"{_safe(task)}.parquet", data, None)]
        targets += [(Path(out_dir) / "predictions" / _safe(model) / f"{_safe(task)}.parquet", held, s[:, j])
                    for model, s in scores.items() if s is not None]
        for path, rows, prob in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_table(rows, j, context_hours, prob), path)
            written.append(path)
    return written


def attach_label_files(data: SiteTensors, directory: Path, context_hours: int) -> SiteTensors:
    """``data`` with its tasks and labels replaced by the MEDS label files ``directory/<task>.parquet``.

    A stay takes the label whose ``(subject_id, prediction_time)`` is its own (stay start + context
    hours); stays without one are undefined (NaN) for that task. Files with other columns or types are a
    :class:`DataValidationError` naming each.
    """
    paths = sorted(Path(directory).glob("*.parquet"))
    if not paths:
        raise DataValidationError(str(directory), ["no <task>.parquet label files (MEDS LabelSchema)"])
    problems, labels = [], np.full((len(data), len(paths)), np.nan, np.float32)
    key = data.stay_start + context_hours * HOUR_US
    want = {f.name: f.type for f in _label_fields()}
    for j, path in enumerate(paths):
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            problems.append(f"{path.name}: not a readable parquet file ({type(exc).__name__})")
            continue
        types = {name: table.schema.field(name).type for name in table.column_names}
        wrong = {k: str(types.get(k)) for k, t in want.items() if not (k in types and (
            types[k] == t or (k == "subject_id" and pa.types.is_integer(types[k]))))}
        if wrong:
            problems.append(f"{path.name}: columns {wrong} do not match MEDS labels "
                            f"{ {k: str(t) for k, t in want.items()} }")
            continue
        subject = table.column("subject_id").to_numpy().astype(np.int64)
        when = table.column("prediction_time").cast(pa.int64()).to_numpy(zero_copy_only=False)
        value = table.column("boolean_value").to_numpy(zero_copy_only=False)
        lookup = {(int(s), int(t)): float(v) for s, t, v in zip(subject, when, value, strict=True)}
        labels[:, j] = [lookup.get((int(s), int(t)), np.nan)
                        for s, t in zip(data.subject_id, key, strict=True)]
    if problems:
        raise DataValidationError(str(directory), problems)
    arrays = {f: getattr(data, f) for f in ("bins", "treat", "time", "mask", "split", "subject_id",
                                            "stay_start")}
    return SiteTensors(**arrays, labels=labels, concepts=data.concepts, treatments=data.treatments,
                       tasks=tuple(p.stem for p in paths), site=data.site, meta=dict(data.meta))
