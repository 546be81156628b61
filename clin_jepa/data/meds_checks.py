"""Schema-level checks of MEDS files (data shards, subject splits, code metadata).

Each check appends human-readable problems (file, column, example rows) to a :class:`Problems` list
and never raises, so one validation run reports everything at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clin_jepa.data.meds import CODE, NAT, SPLITS, SUBJECT, TIME, VALUE, Shard, splits_path

N_EXAMPLES = 3
# the MEDS column types as the meds package declares them, named the way people write them
_SPELLING = {"float": "float32", "double": "float64"}
EXPECTED = {f.name: _SPELLING.get(str(f.type), str(f.type)) for f in meds.DataSchema.schema()
            if f.name in (SUBJECT, TIME, CODE, VALUE)}


class Problems:
    """An append-only list of problem messages."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def extend(self, messages: list[str]) -> None:
        self.items.extend(messages)


def rows_text(s: Shard, rows: np.ndarray) -> str:
    """'e.g. row 3 (subject_id 5, time ..., code 'X', numeric_value 1.0); ...' for the first rows."""
    parts = []
    for r in rows[:N_EXAMPLES]:
        t = "null" if s.time[r] == NAT else str(np.datetime64(int(s.time[r]), "us"))
        parts.append(f"row {int(r)} (subject_id {int(s.subject[r])}, time {t}, code "
                     f"{s.codes[s.code_index[r]]!r}, numeric_value {s.value[r]:g})")
    return "e.g. " + "; ".join(parts)


def _fmt(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, float | np.floating):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def _table_rows(table: pa.Table, rows: np.ndarray) -> str:
    """Example rows of a table that may not have MEDS types (values shown as stored)."""
    records = table.take(pa.array(rows[:N_EXAMPLES], pa.int64())).to_pylist()
    shown = [f"row {int(r)} ({', '.join(f'{k} {_fmt(v)}' for k, v in rec.items())})"
             for r, rec in zip(rows[:N_EXAMPLES], records, strict=True)]
    return "e.g. " + "; ".join(shown)


def _null_rows(col: pa.ChunkedArray) -> np.ndarray:
    return np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _misspelled(extra: str, wanted: list[str]) -> str | None:
    lowered = {w.lower(): w for w in wanted}
    if extra.lower() in lowered:
        return lowered[extra.lower()]
    close = difflib.get_close_matches(extra, wanted, n=1, cutoff=0.75)
    return close[0] if close else None


def check_data_schema(table: pa.Table, name: str, p: Problems, all_names: list[str] | None = None) -> bool:
    """Columns, types and nulls of one data shard; True if it is usable for the deeper checks.

    ``table`` may hold only the MEDS columns; ``all_names`` lists every column of the file.
    """
    cols = table.column_names
    all_names = cols if all_names is None else all_names
    usable = True
    for col in (SUBJECT, TIME, CODE):
        if col not in cols:
            p.add(f"{name}: column '{col}': missing (MEDS requires subject_id int64, time timestamp[us], "
                  f"code string; found {all_names})")
            usable = False
    for extra in sorted(set(all_names) - set(EXPECTED) - {meds.DataSchema.text_value_name}):
        guess = _misspelled(extra, [c for c in EXPECTED if c not in cols])
        if guess:
            p.add(f"{name}: column '{extra}': unexpected extra column; did you mean '{guess}'?")
    if SUBJECT in cols:
        usable &= _check_required_column(table, name, SUBJECT, pa.types.is_integer, p)
    if TIME in cols:
        usable &= _check_time_type(table, name, p)
    if CODE in cols:
        usable &= _check_required_column(table, name, CODE, _is_string, p)
    if VALUE in cols:
        t = table.schema.field(VALUE).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            p.add(f"{name}: column '{VALUE}': type {t}, expected {EXPECTED[VALUE]}")
            usable = False
        elif pa.types.is_floating(t):
            _check_float_values(table, name, p)
    return usable


def _check_required_column(table: pa.Table, name: str, col: str, type_ok: Callable[[pa.DataType], bool],
                           p: Problems) -> bool:
    """A column every row needs: the right type and no nulls. False when the shard cannot be read further."""
    t = table.schema.field(col).type
    if not type_ok(t):
        p.add(f"{name}: column '{col}': type {t}, expected {EXPECTED[col]}")
        return False
    if len(nulls := _null_rows(table.column(col))):
        p.add(f"{name}: column '{col}': {len(nulls)} null value(s); {_table_rows(table, nulls)}")
        return False
    return True


def _check_time_type(table: pa.Table, name: str, p: Problems) -> bool:
    t = table.schema.field(TIME).type
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            p.add(f"{name}: column '{TIME}': type {t} has a time zone; MEDS expects timestamp[us] "
                  "without one")
            return False
        try:
            pc.cast(table.column(TIME), pa.timestamp("us"))
        except (pa.ArrowInvalid, OverflowError) as exc:
            p.add(f"{name}: column '{TIME}': type {t} holds times that do not fit timestamp[us] ({exc})")
            return False
        return True
    msg = f"{name}: column '{TIME}': type {t}, expected {EXPECTED[TIME]}"
    if _is_string(t):
        raw = table.column(TIME).to_pandas()
        parsed = pd.to_datetime(raw, errors="coerce", format="mixed")
        bad = np.flatnonzero(raw.notna().to_numpy() & parsed.isna().to_numpy())
        if len(bad):
            msg += f"; {len(bad)} value(s) are not parseable times: {_table_rows(table, bad)}"
    p.add(msg)
    return False


def _check_float_values(table: pa.Table, name: str, p: Problems) -> None:
    """NaN and inf are not values: MEDS marks a missing value with null."""
    col = table.column(VALUE)
    nan = np.flatnonzero(pc.fill_null(pc.is_nan(col), False).to_numpy(zero_copy_only=False))
    inf = np.flatnonzero(pc.fill_null(pc.is_inf(col), False).to_numpy(zero_copy_only=False))
    for rows, what in ((nan, "NaN (use null for a missing value)"), (inf, "infinite")):
        if len(rows):
            p.add(f"{name}: column '{VALUE}': {len(rows)} value(s) {what}; {_table_rows(table, rows)}")


def read_splits_checked(root: Path, p: Problems) -> dict[int, str] | None:
    """``subject_id -> split name`` from metadata/subject_splits.parquet, reporting every problem."""
    path = splits_path(root)
    name = str(path.relative_to(root))
    if not path.is_file():
        p.add(f"{name}: missing (MEDS subject splits with columns subject_id, split)")
        return None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is corrupt
        p.add(f"{name}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]})")
        return None
    wanted = [meds.SubjectSplitSchema.subject_id_name, meds.SubjectSplitSchema.split_name]
    cols = table.column_names
    ok = True
    for col in wanted:
        if col not in cols:
            p.add(f"{name}: column '{col}': missing (expected columns {wanted}, found {cols})")
            ok = False
    for extra in sorted(set(cols) - set(wanted)):
        p.add(f"{name}: column '{extra}': extra column; MEDS subject splits allow only {wanted}")
    if not ok:
        return None
    if not pa.types.is_integer(table.schema.field("subject_id").type):
        p.add(f"{name}: column 'subject_id': type {table.schema.field('subject_id').type}, expected int64")
        return None
    df = table.select(wanted).to_pandas()
    bad = np.flatnonzero(~df["split"].isin(SPLITS).to_numpy())
    if len(bad):
        p.add(f"{name}: column 'split': {len(bad)} row(s) with a split other than {list(SPLITS)}; "
              f"{_table_rows(table, bad)}")
    nulls = np.flatnonzero(df["subject_id"].isna().to_numpy())
    if len(nulls):
        p.add(f"{name}: column 'subject_id': {len(nulls)} null value(s); {_table_rows(table, nulls)}")
    df = df.dropna()
    n_splits = df.drop_duplicates().groupby("subject_id")["split"].nunique()
    twice = n_splits[n_splits > 1].index.to_numpy()
    if len(twice):
        rows = np.flatnonzero(df["subject_id"].isin(twice[:N_EXAMPLES]).to_numpy())
        p.add(f"{name}: column 'split': {len(twice)} subject(s) assigned to more than one split; "
              f"{_table_rows(table, rows)}")
    return {int(s): str(v) for s, v in zip(df["subject_id"], df["split"], strict=True)}


def check_codes_file(path: Path, p: Problems) -> None:
    """metadata/codes.parquet is optional here, but when present it must be readable and have ``code``."""
    if not path.is_file():
        return
    name = f"{path.parent.name}/{path.name}"
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is corrupt
        p.add(f"{name}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]})")
        return
    if meds.CodeMetadataSchema.code_name not in schema.names:
        p.add(f"{name}: column 'code': missing (MEDS code metadata needs code, description, parent_codes)")
    elif not _is_string(schema.field("code").type):
        p.add(f"{name}: column 'code': type {schema.field('code').type}, expected string")
