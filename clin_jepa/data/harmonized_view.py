"""A site's harmonized MEDS view: its data in the federation's canonical codes and units, as MEDS files.

Tools that read MEDS (ACES task configs, MEDS-DEV labelers) can then be written once for every site:
codes are the catalog's concept names (``creatinine``, ``vasopressor``), ``numeric_value`` is in the
concept's canonical unit (after the site's code_map and unit conversion), and the site's stays are two
codes, ``STAY//START`` and ``STAY//END``, placed where clin-jepa's own stay rules put them (a start while
a stay is open is not a new stay; death closes a stay; a stay with no end code ends at the subject's last
event), so a label from the view lines up with the stay clin-jepa tokenizes. ``MEDS_BIRTH`` and
``MEDS_DEATH`` are kept; ignored and unmapped codes and static rows are left out; rows the site's
``data_quality`` policy drops are dropped here too. The source data is only read.

Invariant: one view shard per source shard (so each subject stays in one shard), rows sorted by
``subject_id`` then ``time``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clin_jepa.config import SiteConfig
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import CodeMapper, Harmonized, Stays, find_stays, harmonize
from clin_jepa.data.meds import NAT, read_shard, shard_paths, splits_path

STAY_START = "STAY//START"
STAY_END = "STAY//END"


def _view_table(h: Harmonized, stays: Stays) -> pa.Table:
    s = h.shard
    names = np.array(load_concepts().names, dtype=object)
    timed = s.time != NAT
    mapped = np.flatnonzero((h.concept >= 0) & timed)
    special = np.flatnonzero((h.info.is_birth | h.info.is_death)[s.code_index] & timed)
    subject = np.concatenate([s.subject[mapped], s.subject[special], stays.subject, stays.subject])
    time = np.concatenate([s.time[mapped], s.time[special], stays.start, stays.end])
    code = np.concatenate([names[h.concept[mapped]], np.array(s.codes, dtype=object)[s.code_index[special]],
                           np.full(len(stays), STAY_START, dtype=object),
                           np.full(len(stays), STAY_END, dtype=object)])
    value = np.concatenate([h.value[mapped], np.full(len(special) + 2 * len(stays), np.nan)])
    order = np.lexsort((time, subject))
    fields = {f.name: f for f in meds.DataSchema.schema()}
    columns = {meds.DataSchema.subject_id_name: pa.array(subject[order], pa.int64()),
               meds.DataSchema.time_name: pa.array(time[order], pa.int64()).cast(pa.timestamp("us")),
               meds.DataSchema.code_name: pa.array(code[order].tolist(), pa.string()),
               meds.DataSchema.numeric_value_name: pa.array(value[order], pa.float32(),
                                                            mask=np.isnan(value[order]))}
    return pa.Table.from_arrays(list(columns.values()), schema=pa.schema([fields[k] for k in columns]))


def _codes_table() -> pa.Table:
    table = load_concepts()
    rows = [(c.name, f"{c.kind} {c.name}" + (f" [{c.unit}]" if c.unit else ""))
            for c in table.measurements + table.treatments]
    rows += [(STAY_START, "start of a stay (the site config's stay: rules)"),
             (STAY_END, "end of a stay (end code, death, or the subject's last event)")]
    code, description = zip(*rows, strict=True)
    return pa.Table.from_arrays([pa.array(code, pa.string()), pa.array(description, pa.string())],
                                names=[meds.CodeMetadataSchema.code_name,
                                       meds.CodeMetadataSchema.description_name])


def write_harmonized_view(cfg: SiteConfig, out: Path) -> list[Path]:
    """Write the view of a validated site under ``out`` (``data/``, ``metadata/``); returns its shards."""
    root, mapper, written = cfg.data_path, CodeMapper(cfg), []
    for path in shard_paths(root):
        h = harmonize(read_shard(path), mapper)
        target = out / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_view_table(h, find_stays(h)), target)
        written.append(target)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(splits_path(root), splits_path(out))
    pq.write_table(_codes_table(), out / meds.code_metadata_filepath)
    return written
