"""Writing a simulated hospital as a MEDS dataset, in that hospital's own codes and units.

Layout: ``data/<split>/<k>.parquet`` (each subject in exactly one shard, its events contiguous and sorted
by time, static events first), ``metadata/codes.parquet``, ``metadata/subject_splits.parquet`` and
``metadata/dataset.json``; beside them, outside the MEDS layout, ``ground_truth.parquet`` (the hidden
truth per stay, see ``ground_truth``). Nothing in the output depends on the clock or the machine, so the same
simulation writes byte-identical files. The dataset is assembled in a hidden sibling folder and renamed
into place, so an interrupted run never leaves a folder that looks like a finished dataset.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clin_jepa.data.synth.extra import EXTRA_MEASUREMENTS
from clin_jepa.data.synth.ground_truth import FILENAME as GROUND_TRUTH_FILE
from clin_jepa.data.synth.ground_truth import ground_truth_table
from clin_jepa.data.synth.hospital import US_PER_HOUR, Hospital
from clin_jepa.data.synth.physiology import MEASUREMENTS, TREATMENTS

_NAT = np.iinfo(np.int64).min
DATA_SCHEMA = pa.schema([meds.DataSchema.schema().field(name) for name in
                         ("subject_id", "time", "code", "numeric_value")])
SPLIT_SHARES = ((meds.train_split, 0.7), (meds.tuning_split, 0.15), (meds.held_out_split, 0.15))


def _package_version() -> str:
    try:
        return version("clin-jepa")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class _Vocabulary:
    """Codes in first-use order, with descriptions for ``codes.parquet``."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.descriptions: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, code: str, description: str) -> int:
        if code not in self._index:
            self._index[code] = len(self.codes)
            self.codes.append(code)
            self.descriptions.append(description)
        return self._index[code]


@dataclass
class _Events:
    subject: list[np.ndarray]
    time: list[np.ndarray]
    code: list[np.ndarray]
    value: list[np.ndarray]

    def add(self, subject: np.ndarray, time: np.ndarray, code: np.ndarray | int,
            value: np.ndarray | None = None) -> None:
        n = len(subject)
        self.subject.append(np.asarray(subject, dtype=np.int64))
        self.time.append(np.asarray(time, dtype=np.int64))
        self.code.append(np.broadcast_to(np.asarray(code, dtype=np.int32), (n,)))
        self.value.append(np.full(n, np.nan, dtype=np.float32) if value is None
                          else np.asarray(value, dtype=np.float32))


def _hospital_events(h: Hospital, rng: np.random.Generator) -> tuple[_Events, _Vocabulary]:
    """Every event of ``h`` as flat arrays (subject index, time in us, code index, site value)."""
    p, vocab, ev = h.profile, _Vocabulary(), _Events([], [], [], [])
    n_subj = len(h.subject_id)
    subj = np.arange(n_subj)
    sex = np.where(h.female, vocab.add(p.sex_codes[0], "Sex: female"), vocab.add(p.sex_codes[1], "Sex: male"))
    ev.add(subj, np.full(n_subj, _NAT), sex)
    ev.add(subj, h.birth_us, vocab.add(meds.birth_code, "Birth"))

    stay_subj, admit, end = h.stay_subject, h.admit_us, (h.course.end * US_PER_HOUR).astype(np.int64)
    hosp_admit = admit - (rng.uniform(1.0, 36.0, len(admit)) * US_PER_HOUR).astype(np.int64)
    for code in p.admission_codes:
        ev.add(stay_subj, hosp_admit, vocab.add(code, "Administrative event"))
    icu_in = np.array([vocab.add(c, "ICU admission") for c in p.icu_admit_codes])
    ev.add(stay_subj, admit, icu_in[rng.integers(0, len(icu_in), len(admit))])

    obs = h.obs
    for k, concept in enumerate((*MEASUREMENTS, *TREATMENTS)):
        c = p.codings[concept]
        sel = obs.concept == k
        codes = np.array([vocab.add(code, f"{c.description} ({c.unit})" if c.unit else c.description)
                          for code in c.codes])
        value = obs.value[sel].astype(np.float64)
        if c.unit is not None:
            value = np.round(value * c.scale + c.offset, c.decimals)
        stay = obs.stay[sel]
        t = admit[stay] + (obs.hour[sel] * US_PER_HOUR).astype(np.int64)
        ev.add(stay_subj[stay], t, codes[rng.integers(0, len(codes), len(stay))], value)

    draw_stay, draw_h = obs.lab_draws
    mapped = {code for c in p.codings.values() for code in c.codes}
    for code, typical, description in p.unmapped_labs:
        sel = rng.random(len(draw_stay)) < p.unmapped_prob
        value = np.round(typical * np.exp(rng.normal(0.0, 0.6, sel.sum())), 2)
        if code in mapped:  # simulated as an extra concept now; drawn anyway so the splits stay the same
            continue
        t = admit[draw_stay[sel]] + (draw_h[sel] * US_PER_HOUR).astype(np.int64)
        ev.add(stay_subj[draw_stay[sel]], t, vocab.add(code, description), value)

    ev.add(stay_subj, admit + end, vocab.add(p.icu_discharge_code, "ICU discharge"))
    died = h.course.died
    # The ICU discharge of a patient who died is charted at the time of death, never after it.
    ev.add(stay_subj[died], (admit + end)[died], vocab.add(meds.death_code, "Death"))
    if h.extra is not None:  # last, and without the write stream, so the core events stay as they were
        for k, concept in enumerate(EXTRA_MEASUREMENTS):
            c, sel = p.codings[concept], h.extra.concept == k
            stay = h.extra.stay[sel]
            t = admit[stay] + (h.extra.hour[sel] * US_PER_HOUR).astype(np.int64)
            value = np.round(h.extra.value[sel] * c.scale + c.offset, c.decimals)
            ev.add(stay_subj[stay], t, vocab.add(c.codes[0], f"{c.description} ({c.unit})"), value)
    return ev, vocab


def _split_of_subjects(n: int, rng: np.random.Generator) -> np.ndarray:
    """Split index (0 train, 1 tuning, 2 held_out) per subject, in the shares of ``SPLIT_SHARES``."""
    order = rng.permutation(n)
    split = np.empty(n, dtype=np.int64)
    bounds = np.round(np.cumsum([s for _, s in SPLIT_SHARES]) * n).astype(int)
    start = 0
    for i, stop in enumerate(bounds):
        split[order[start:stop]] = i
        start = stop
    return split


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_hospital(h: Hospital, root: Path, rng: np.random.Generator, subjects_per_shard: int,
                   description: str) -> dict[str, int]:
    """Write ``h`` as a MEDS dataset at ``root`` (which must not exist yet); returns counts."""
    ev, vocab = _hospital_events(h, rng)
    subject = np.concatenate(ev.subject)
    time = np.concatenate(ev.time)
    code = np.concatenate(ev.code)
    value = np.concatenate(ev.value)
    split = _split_of_subjects(len(h.subject_id), rng)
    # Shard k of a split holds that split's subjects k*size..(k+1)*size-1 in id order.
    rank = np.empty(len(split), dtype=np.int64)
    for s in range(len(SPLIT_SHARES)):
        members = np.flatnonzero(split == s)
        rank[members] = np.arange(len(members))
    shard_key = split * 1_000_000 + rank // subjects_per_shard
    order = np.lexsort((code, time, subject, shard_key[subject]))
    subject, time, code, value, key = subject[order], time[order], code[order], value[order], \
        shard_key[subject[order]]

    tmp = root.parent / f".tmp-{root.name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left over by an interrupted run of ours
    vocab_arr = pa.array(vocab.codes, pa.string())
    bounds = np.flatnonzero(np.diff(key)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(key)], strict=True):
        split_name = SPLIT_SHARES[key[lo] // 1_000_000][0]
        table = pa.table({
            "subject_id": pa.array(h.subject_id[subject[lo:hi]], pa.int64()),
            "time": pa.array(time[lo:hi], pa.timestamp("us"), mask=time[lo:hi] == _NAT),
            "code": pc.take(vocab_arr, pa.array(code[lo:hi])),
            "numeric_value": pa.array(value[lo:hi], pa.float32(), mask=np.isnan(value[lo:hi])),
        }, schema=DATA_SCHEMA)
        path = tmp / meds.data_subdirectory / split_name / f"{key[lo] % 1_000_000}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_parquet_bytes(table))

    meta = tmp / "metadata"
    meta.mkdir(parents=True)
    codes = pa.table({"code": vocab.codes, "description": vocab.descriptions,
                      "parent_codes": [[] for _ in vocab.codes]}, schema=meds.CodeMetadataSchema.schema())
    (tmp / meds.code_metadata_filepath).write_bytes(_parquet_bytes(codes))
    splits = pa.table({"subject_id": h.subject_id, "split": [SPLIT_SHARES[s][0] for s in split]},
                      schema=meds.SubjectSplitSchema.schema())
    (tmp / meds.subject_splits_filepath).write_bytes(_parquet_bytes(splits))
    info = {"dataset_name": f"clin-jepa-synthetic-{h.profile.site}", "dataset_version": description,
            "etl_name": "clin-jepa synth", "etl_version": _package_version(),
            "meds_version": meds.__version__}
    (tmp / meds.dataset_metadata_filepath).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (tmp / GROUND_TRUTH_FILE).write_bytes(_parquet_bytes(ground_truth_table(h)))
    _replace_dir(tmp, root)
    return {"subjects": len(h.subject_id), "stays": len(h.admit_us), "events": len(subject),
            "shards": len(bounds) + 1, "deaths": int(h.course.died.sum())}


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished ``new`` folder to ``target``, replacing an older dataset there."""
    old = target.parent / f".old-{target.name}"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)
