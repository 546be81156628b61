"""The synthetic generator's hidden ground truth joined to tensor rows (``evaluate --ground-truth``).

``clin-jepa synth`` writes ``<site data path>/ground_truth.parquet``, one row per ICU stay:

    subject_id int64, stay_start timestamp[us], cohort string, deteriorating bool, onset_hour float32,
    severity_24h, severity_peak

Training never reads it; evaluation reads it only when asked. A stay is identified by
``(subject_id, stay_start)``, the same pair :class:`~clin_jepa.data.tokenize.SiteTensors` carries per row,
and joined per site (subject ids may repeat across hospitals). Hidden cohorts: *deteriorating* = the
generator's ``deteriorating`` flag; *stable* = ``cohort == "stable"`` and not deteriorating; every other
stay (another cohort that does not deteriorate, or no ground-truth row) is in neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clin_jepa.errors import DataValidationError
from clin_jepa.evaluation.geometry import DETERIORATING, STABLE, UNDEFINED

FILE_NAME = "ground_truth.parquet"
REQUIRED = ("subject_id", "stay_start", "cohort", "deteriorating")


def read_ground_truth(data_path: str | Path) -> dict[str, np.ndarray]:
    """The required columns of ``data_path/ground_truth.parquet`` as numpy arrays (stay_start in µs).

    Raises :class:`DataValidationError` naming the file when it is missing, unreadable or lacks a column.
    """
    path = Path(data_path) / FILE_NAME
    if not path.is_file():
        raise DataValidationError(str(path), [
            "--ground-truth was given but this site has no ground-truth file; it exists only for synthetic "
            "hospitals written by `clin-jepa synth` (regenerate them, or drop --ground-truth for real data)"])
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(str(path), [f"cannot read the ground-truth parquet: {exc}"]) from None
    problems = [f"missing column {c!r}" for c in REQUIRED if c not in table.column_names]
    if not problems and not pa.types.is_timestamp(table.schema.field("stay_start").type):
        problems.append(f"stay_start must be a timestamp, got {table.schema.field('stay_start').type}")
    if problems:
        raise DataValidationError(str(path), problems + [f"columns found: {table.column_names}"])
    start = table.column("stay_start").cast(pa.timestamp("us")).cast(pa.int64())
    return {"subject_id": table.column("subject_id").to_numpy().astype(np.int64),
            "stay_start": start.to_numpy(zero_copy_only=False).astype(np.int64),
            "cohort": np.asarray(table.column("cohort").to_pylist(), dtype=object),
            "deteriorating": np.asarray(table.column("deteriorating").to_pylist(), dtype=bool)}


def hidden_cohorts(subject_id: np.ndarray, stay_start: np.ndarray, truth: dict[str, np.ndarray],
                   source: str) -> np.ndarray:
    """(N,) int8 STABLE / DETERIORATING / UNDEFINED for the rows ``(subject_id, stay_start)`` of one site.

    Raises :class:`DataValidationError` when no row finds its stay: the file belongs to other data.
    """
    code = np.where(truth["deteriorating"], DETERIORATING,
                    np.where(truth["cohort"] == "stable", STABLE, UNDEFINED)).astype(np.int8)
    lookup = {(int(s), int(t)): int(c) for s, t, c in zip(truth["subject_id"], truth["stay_start"], code,
                                                             strict=True)}
    keys = zip(subject_id.tolist(), stay_start.tolist(), strict=True)
    found = [lookup.get(k) for k in keys]
    if found and all(f is None for f in found):
        raise DataValidationError(source, [
            f"none of the {len(found)} ICU stays matches a (subject_id, stay_start) row of {FILE_NAME}; the "
            "file was written for other data (regenerate the hospitals with `clin-jepa synth`)"])
    return np.array([UNDEFINED if f is None else f for f in found], dtype=np.int8)
