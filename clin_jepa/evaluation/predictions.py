"""Per-stay held-out labels and probe predictions as MEDS label files, for tools of the MEDS ecosystem.

``labels/<task>.parquet`` follows ``meds.LabelSchema`` (``subject_id``, ``prediction_time``,
``boolean_value``); ``predictions/<model>/<task>.parquet`` adds the two columns the ``meds-evaluation``
package reads (``predicted_boolean_value``, ``predicted_boolean_probability``). One row per held-out stay
with a defined label; the prediction time is the stay start plus the evaluation's context hours (the
probe reads nothing later). Written beside metrics.json by ``clin-jepa evaluate``.
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


def write_label_files(out_dir: Path, held: SiteTensors, context_hours: int,
                      scores: Mapping[str, np.ndarray | None]) -> list[Path]:
    """Write ``labels/`` and, per model with held-out probabilities ``(n_held, n_tasks)``,
    ``predictions/``; returns the files written."""
    written = []
    for j, task in enumerate(held.tasks):
        targets = [(Path(out_dir) / "labels" / f"{_safe(task)}.parquet", None)]
        targets += [(Path(out_dir) / "predictions" / _safe(model) / f"{_safe(task)}.parquet", s[:, j])
                    for model, s in scores.items() if s is not None]
        for path, prob in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_table(held, j, context_hours, prob), path)
            written.append(path)
    return written
