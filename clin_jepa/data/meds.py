"""Reading a MEDS dataset from disk, one shard at a time.

Layout (MEDS 0.4, see ``meds.DataSchema``): ``data/**/*.parquet`` with ``subject_id`` int64, ``time``
timestamp[us] (null = static), ``code`` string, optional ``numeric_value`` float32 and ``text_value``;
``metadata/subject_splits.parquet`` (``subject_id``, ``split``) and ``metadata/codes.parquet``.
Invariant: readers never hold more than one data shard in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clin_jepa.errors import DataValidationError

SUBJECT, TIME, CODE, VALUE = (meds.DataSchema.subject_id_name, meds.DataSchema.time_name,
                              meds.DataSchema.code_name, meds.DataSchema.numeric_value_name)
REQUIRED_COLUMNS = (SUBJECT, TIME, CODE)
SPLITS = (meds.train_split, meds.tuning_split, meds.held_out_split)
SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}  # the int8 code stored in SiteTensors.split
NAT = np.iinfo(np.int64).min  # stands for a null time in int64 microsecond arrays


def shard_paths(root: Path) -> list[Path]:
    """Data shards under ``root/data`` in a fixed (sorted) order; empty if there are none."""
    return sorted((root / meds.data_subdirectory).rglob("*.parquet"))


def splits_path(root: Path) -> Path:
    return root / meds.subject_splits_filepath


def codes_path(root: Path) -> Path:
    return root / meds.code_metadata_filepath


@dataclass
class Shard:
    """One data shard as flat numpy columns (times as int64 microseconds, null -> ``NAT``).

    ``code_index`` points into ``codes`` (the shard's distinct codes), so per-code decisions are made
    once per distinct code rather than once per event.
    """

    path: Path
    subject: np.ndarray  # int64
    time: np.ndarray  # int64 us, NAT where null
    code_index: np.ndarray  # int32 into ``codes``
    codes: list[str]
    value: np.ndarray  # float64, NaN where null

    def __len__(self) -> int:
        return len(self.subject)


def table_to_shard(path: Path, table: pa.Table) -> Shard:
    """Flatten an already schema-checked table (see ``validate``) into a :class:`Shard`."""
    subject = table.column(SUBJECT).to_numpy().astype(np.int64, copy=False)
    t = table.column(TIME)
    if t.type != pa.timestamp("us"):
        t = t.cast(pa.timestamp("us"))
    time = pc.fill_null(t.cast(pa.int64()), NAT).to_numpy()
    codes, code_index = _encode_codes(table)
    if VALUE in table.column_names:
        value = pc.fill_null(table.column(VALUE).cast(pa.float64()), np.nan).to_numpy()
    else:
        value = np.full(len(subject), np.nan)
    return Shard(path, subject, time, code_index, codes, value)


def _encode_codes(table: pa.Table) -> tuple[list[str], np.ndarray]:
    """Distinct codes and per-event indices; reuses parquet's own dictionary when it was read as one."""
    col = table.column(CODE)
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    if col.num_chunks > 1:
        col = table.select([CODE]).set_column(0, CODE, col).unify_dictionaries().column(CODE)
    if col.num_chunks == 0:
        return [], np.zeros(0, np.int32)
    codes = col.chunk(0).dictionary.to_pylist()
    index = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks])
    return codes, index.astype(np.int32, copy=False)


def read_shard(path: Path) -> Shard:
    """Read the columns this project uses from one data shard (codes straight from parquet's dictionary)."""
    try:
        columns = [c for c in (SUBJECT, TIME, CODE, VALUE) if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=columns, read_dictionary=[CODE])
    except (pa.ArrowException, OSError) as exc:  # a damaged or truncated shard is an input problem
        raise DataValidationError(str(path.parent), [f"{path.name}: not a readable parquet file "
                                                     f"({type(exc).__name__}: {str(exc)[:200]}); run "
                                                     f"`clin-jepa validate` on the site"]) from None
    return table_to_shard(path, table)


def iter_shards(root: Path) -> Iterator[Shard]:
    for path in shard_paths(root):
        yield read_shard(path)


def read_splits(root: Path) -> dict[int, int]:
    """``subject_id -> split code`` (0 train, 1 tuning, 2 held_out); assumes a validated file."""
    path = splits_path(root)
    if not path.is_file():
        raise DataValidationError(str(root), [f"{path}: subject splits file is missing"])
    table = pq.read_table(path, columns=[meds.SubjectSplitSchema.subject_id_name,
                                         meds.SubjectSplitSchema.split_name])
    ids = table.column(0).to_pylist()
    names = table.column(1).to_pylist()
    return {int(s): SPLIT_CODE.get(n, -1) for s, n in zip(ids, names, strict=True)}
