"""Hourly ICU-stay trajectories as fixed-shape numpy tensors (``SiteTensors``), cached per site.

One row per eligible ICU stay (>= 24 h, subject alive 24 h after the start). Hour ``h`` covers
``[start + h, start + h + 1)``; an hour lies in the stay (``mask``) iff it starts before the stay ends.
Per hour and vocabulary concept the token is the value bin of the LAST value in that hour (0 = none);
only events inside the stay are tokenized. Rows keep the order shard path, subject, stay start.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clin_jepa.config import SiteConfig
from clin_jepa.data.concepts import check_catalog, check_site_catalog, load_concepts
from clin_jepa.data.harmonize import HOUR_US, CodeMapper, Stays, eligible_stay_events, harmonize
from clin_jepa.data.meds import NAT, SPLIT_CODE, Shard, iter_shards, read_splits, shard_paths, splits_path
from clin_jepa.data.stats import Discretization, array_digest, mapping_key
from clin_jepa.data.tasks import TaskSpec, compute_labels
from clin_jepa.errors import ClinJepaError, DataValidationError
from clin_jepa.io import atomic_write_bytes

CONTEXT_HOURS = 24
N_TIME_FEATURES = 4
ARRAY_FIELDS = ("bins", "treat", "time", "mask", "labels", "split", "subject_id", "stay_start")


@dataclass
class SiteTensors:
    """See docs/internals.md for the shapes: bins (N,T,C) int16, treat (N,T,K) f32, time (N,T,4) f32,
    mask (N,T) bool, labels (N,n_tasks) f32 (NaN = undefined), split (N,) int8, subject_id (N,) int64,
    stay_start (N,) int64 microseconds since the epoch (NAT = unknown; with ``subject_id`` it names the stay,
    so per-stay side information such as a generator's ground truth can be joined to rows)."""

    bins: np.ndarray
    treat: np.ndarray
    time: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    subject_id: np.ndarray
    stay_start: np.ndarray | None = None  # None (hand-made tensors) becomes all NAT
    concepts: tuple[str, ...] = ()
    treatments: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    site: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stay_start is None:
            self.stay_start = np.full(len(self.subject_id), NAT, np.int64)

    def __len__(self) -> int:
        return len(self.subject_id)

    @property
    def hours(self) -> int:
        return self.bins.shape[1]

    def take(self, index: np.ndarray) -> SiteTensors:
        arrays = {f: getattr(self, f)[index] for f in ARRAY_FIELDS}
        return SiteTensors(**arrays, concepts=self.concepts, treatments=self.treatments, tasks=self.tasks,
                           site=self.site, meta=dict(self.meta))

    def subset(self, split_name: str) -> SiteTensors:
        """Rows of one split: ``train``, ``tuning`` or ``held_out``."""
        if split_name not in SPLIT_CODE:
            raise KeyError(f"split {split_name!r} is not one of {list(SPLIT_CODE)}")
        return self.take(np.flatnonzero(self.split == SPLIT_CODE[split_name]))

    @staticmethod
    def concat(parts: list[SiteTensors]) -> SiteTensors:
        """Rows of all parts in order; they must share vocabulary, treatments, tasks and hours."""
        if not parts:
            raise ValueError("concat needs at least one SiteTensors")
        head = parts[0]
        for p in parts[1:]:
            if (p.concepts, p.treatments, p.tasks, p.hours) != (head.concepts, head.treatments, head.tasks,
                                                                  head.hours):
                raise ValueError("concat: parts differ in concepts, treatments, tasks or hours")
        arrays = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ARRAY_FIELDS}
        site = head.site if all(p.site == head.site for p in parts) else "+".join(p.site for p in parts)
        return SiteTensors(**arrays, concepts=head.concepts, treatments=head.treatments, tasks=head.tasks,
                           site=site)

    @classmethod
    def empty(cls, disc: Discretization, tasks: tuple[TaskSpec, ...], hours: int, site: str) -> SiteTensors:
        c, k = len(disc.concepts), len(disc.treatments)
        return cls(np.zeros((0, hours, c), np.int16), np.zeros((0, hours, k), np.float32),
                   np.zeros((0, hours, N_TIME_FEATURES), np.float32), np.zeros((0, hours), bool),
                   np.zeros((0, len(tasks)), np.float32), np.zeros(0, np.int8), np.zeros(0, np.int64),
                   np.zeros(0, np.int64), disc.concepts, disc.treatments, tuple(t.name for t in tasks), site)


def _time_features(stays: Stays, hours: int) -> np.ndarray:
    h = np.arange(hours, dtype=np.float64)
    start_hour = (stays.start // HOUR_US) % 24
    clock = (start_hour[:, None] + h[None, :]) % 24 * (2 * np.pi / 24)
    age = np.where(stays.birth != NAT, (stays.start - stays.birth) / (HOUR_US * 24 * 365.25), 0.0)
    out = np.empty((len(stays), hours, N_TIME_FEATURES), np.float32)
    out[:, :, 0] = h / hours
    out[:, :, 1] = np.sin(clock)
    out[:, :, 2] = np.cos(clock)
    out[:, :, 3] = (age / 100.0)[:, None]
    return out


class _Tokenizer:
    """Shard -> SiteTensors with fixed vocabulary lookups built once."""

    def __init__(self, cfg: SiteConfig, disc: Discretization, tasks: tuple[TaskSpec, ...],
                 hours: int) -> None:
        check_site_catalog(cfg.site, cfg.concept_catalog)
        check_catalog(disc.catalog, "the discretization (from the statistics round or a checkpoint)")
        table = load_concepts()
        self.cfg, self.disc, self.tasks, self.hours = cfg, disc, tasks, hours
        self.mapper = CodeMapper(cfg)
        n = len(table.names)
        self.column = np.full(n, -1, np.int64)  # canonical index -> bins column (-1: not in vocabulary)
        self.treat_column = np.full(n, -1, np.int64)
        unknown = [c for c in disc.concepts + disc.treatments if c not in table.names]
        if unknown:
            raise ClinJepaError(f"discretization: unknown concept(s) {unknown}; this version knows "
                                f"{', '.join(table.names)}")
        for j, name in enumerate(disc.concepts):
            self.column[table.index(name)] = j
        for j, name in enumerate(disc.treatments):
            self.treat_column[table.index(name)] = j
        self.horizon = int(max([hours, *(t.horizon_hours for t in tasks)]))
        self.splits = read_splits(cfg.data_path)

    def tokenize(self, shards: Iterable[Shard]) -> SiteTensors:
        parts = [self._one(shard) for shard in shards]
        parts = [p for p in parts if len(p)]
        empty = SiteTensors.empty(self.disc, self.tasks, self.hours, self.cfg.site)
        return SiteTensors.concat([empty, *parts])

    def _one(self, shard: Shard) -> SiteTensors:
        h = harmonize(shard, self.mapper)
        _, stays, ev = eligible_stay_events(h, self.horizon)
        n, T = len(stays), self.hours
        C, K = len(self.disc.concepts), len(self.disc.treatments)
        duration = stays.end - stays.start
        mask = np.arange(T)[None, :] * HOUR_US < duration[:, None]
        # only in-stay events become tokens; labels (below) may look past the stay end
        tok = ev.offset < np.minimum(duration, T * HOUR_US)[ev.stay]
        cell = ev.stay * T + ev.offset // HOUR_US  # (stay, hour)
        col = self.column[ev.concept]
        m = np.flatnonzero(tok & (col >= 0) & np.isfinite(ev.value))
        bins = np.zeros(n * T * C, np.int16)
        self._fill_bins(bins, cell[m], col[m], ev.value[m], ev.offset[m])
        treat = np.zeros(n * T * K, np.float32)
        tcol = self.treat_column[ev.concept]
        mt = tok & (tcol >= 0)
        treat[cell[mt] * K + tcol[mt]] = 1.0
        labels = compute_labels(self.tasks, stays, ev)
        split = np.array([self.splits.get(int(s), -1) for s in stays.subject], np.int8)
        if (split < 0).any():
            missing = np.unique(stays.subject[split < 0])[:5].tolist()
            raise DataValidationError(str(shard.path), [
                f"subjects {missing} have no valid split in subject_splits.parquet (run validate)"])
        return SiteTensors(bins.reshape(n, T, C), treat.reshape(n, T, K), _time_features(stays, T), mask,
                           labels, split, stays.subject.astype(np.int64), stays.start.astype(np.int64),
                           self.disc.concepts,
                           self.disc.treatments, tuple(t.name for t in self.tasks), self.cfg.site)

    def _fill_bins(self, bins: np.ndarray, cell: np.ndarray, col: np.ndarray, value: np.ndarray,
                   offset: np.ndarray) -> None:
        """Write into flat ``bins`` the value bin of the latest event of every (stay, hour, concept) cell.

        Events are grouped by concept with one stable radix sort of a small int; for a shard sorted by
        subject and time (as MEDS requires) that already orders every cell's events by time, which is
        checked, and only unsorted input pays for a full sort.
        """
        C = len(self.disc.concepts)
        if C == 0 or len(col) == 0:
            return
        order = np.argsort(col.astype(np.int16), kind="stable")
        key = col[order] * (len(bins) // C) + cell[order]  # concept-major cell id
        off = offset[order]
        same = key[1:] == key[:-1]
        if not (np.all(key[1:] >= key[:-1]) and np.all(off[1:][same] >= off[:-1][same])):
            resort = np.lexsort((off, key))
            order, key = order[resort], key[resort]
            same = key[1:] == key[:-1]
        winners = order[np.flatnonzero(np.r_[~same, True])]  # latest event per cell, grouped by concept
        c, v = col[winners], value[winners]
        bounds = np.searchsorted(c, np.arange(C + 1))
        b = np.empty(len(winners), np.int16)
        for j, name in enumerate(self.disc.concepts):
            lo, hi = bounds[j], bounds[j + 1]
            edges, part = self.disc.edges[name], v[lo:hi]
            if len(edges) <= 16:  # counting edges <= v is searchsorted(side="right") without branches
                out = b[lo:hi]
                out[:] = 1
                for e in edges:
                    out += part >= e
            else:
                b[lo:hi] = 1 + np.searchsorted(edges, part, side="right")
        bins[cell[winners] * C + c] = b


def tokenize_dataset(cfg: SiteConfig, disc: Discretization, tasks: tuple[TaskSpec, ...],
                     hours: int = 72) -> SiteTensors:
    """Build tensors without the cache (streams shard by shard)."""
    if hours < CONTEXT_HOURS:
        raise ValueError(f"hours must be >= {CONTEXT_HOURS}, got {hours}")
    return _Tokenizer(cfg, disc, tasks, hours).tokenize(iter_shards(cfg.data_path))


# ---- cache -------------------------------------------------------------------------------------------
CACHE_VERSION = 3  # 2: stay_start; 3: unit conversions by the units library, data_quality


def cache_key(cfg: SiteConfig, disc: Discretization, tasks: tuple[TaskSpec, ...], hours: int) -> str:
    """sha256 over everything the tensors depend on: the data files' names, sizes and mtimes (and the
    splits file's), the site's mapping and stay definition, the discretization, the task specs, hours."""
    root = cfg.data_path
    files = [*shard_paths(root), splits_path(root)]
    stat = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()]
    content = {
        "version": CACHE_VERSION, "files": stat, "disc": disc.fingerprint(), "hours": hours,
        "tasks": [t.to_dict() for t in tasks],
        "mapping": mapping_key(cfg),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def save_tensors(path: Path, tensors: SiteTensors) -> None:
    """Write ``tensors`` atomically as .npz with a content digest checked by :func:`load_tensors`."""
    arrays = {f: getattr(tensors, f) for f in ARRAY_FIELDS}
    meta = {"concepts": list(tensors.concepts), "treatments": list(tensors.treatments),
            "tasks": list(tensors.tasks), "site": tensors.site, "digest": array_digest(arrays)}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_tensors(path: Path) -> SiteTensors | None:
    """The tensors in ``path``, or None if the file is missing, unreadable or fails its digest."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {f: z[f] for f in ARRAY_FIELDS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("digest") != array_digest(arrays):
        return None
    return SiteTensors(**arrays, concepts=tuple(meta["concepts"]), treatments=tuple(meta["treatments"]),
                       tasks=tuple(meta["tasks"]), site=str(meta["site"]))


def build_site_tensors(cfg: SiteConfig, disc: Discretization, tasks: tuple[TaskSpec, ...],
                       hours: int = 72, use_cache: bool = True) -> SiteTensors:
    """Tensors for one site, from ``cfg.state_dir/cache/tensors-<key>.npz`` when a valid one exists.

    A cache file that cannot be read or fails its digest is rebuilt and overwritten, never trusted.
    ``meta["cache"]`` of the result says "hit" or "miss".
    """
    path = Path(cfg.state_dir) / "cache" / f"tensors-{cache_key(cfg, disc, tasks, hours)}.npz"
    if use_cache:
        cached = load_tensors(path)
        if cached is not None:
            cached.meta["cache"] = "hit"
            return cached
    tensors = tokenize_dataset(cfg, disc, tasks, hours)
    if use_cache:
        save_tensors(path, tensors)
    tensors.meta["cache"] = "miss"
    return tensors
