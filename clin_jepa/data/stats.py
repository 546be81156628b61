"""Federated-mergeable value statistics and the shared discretization derived from them.

A site summarizes its train-split values as fixed-grid histograms (``HIST_CELLS`` equal cells over each
concept's plausible range from ``concepts.yaml``). Histograms add, so merging sites is a sum and
``quantile_edges(merge_statistics([a, b]))`` equals ``quantile_edges`` of the pooled data exactly.
Only these counts ever leave a site, never rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clin_jepa.config import SiteConfig
from clin_jepa.data.concepts import check_site_catalog, load_concepts
from clin_jepa.data.harmonize import CodeMapper, find_stays, harmonize
from clin_jepa.data.meds import NAT, SPLIT_CODE, iter_shards, read_splits, shard_paths, splits_path
from clin_jepa.errors import ClinJepaError
from clin_jepa.io import atomic_write_bytes

HIST_CELLS = 512
DEFAULT_BINS = 10
MAX_COUNT = 1 << 40  # the largest count a statistics reply may carry


@dataclass
class SiteStatistics:
    """Counts in canonical order: ``hist`` (M measurements, HIST_CELLS) int64, ``counts`` (M + K,) int64
    events per concept, and the numbers of subjects and eligible stays. Merged by addition."""

    hist: np.ndarray
    counts: np.ndarray
    n_subjects: int = 0
    n_stays: int = 0
    # Distinct patients behind each histogram cell and each concept count: kept at the site to decide
    # what may leave (:meth:`suppressed`), never transported. None when not computed.
    cell_patients: np.ndarray | None = None
    concept_patients: np.ndarray | None = None
    # Each patient's values of a concept spread over its cells as fractions summing to 1, added over the
    # patients (float64, like ``hist``): one patient moves each concept's row by at most 1 in L1 and L2,
    # the bounded contribution that noise is calibrated to (``clin_jepa.privacy.statistics``). Site only.
    patient_mass: np.ndarray | None = None

    @classmethod
    def empty(cls) -> SiteStatistics:
        table = load_concepts()
        hist, counts = np.zeros((len(table.measurements), HIST_CELLS), np.int64), np.zeros(len(table.names),
                                                                                          np.int64)
        return cls(hist, counts, cell_patients=np.zeros_like(hist), concept_patients=np.zeros_like(counts),
                   patient_mass=np.zeros(hist.shape, np.float64))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for transport (e.g. a Flower ArrayRecord)."""
        return {"hist": self.hist.copy(), "counts": self.counts.copy(),
                "n_subjects": np.array([self.n_subjects], np.int64),
                "n_stays": np.array([self.n_stays], np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SiteStatistics:
        """Inverse of :meth:`to_arrays`; refuses arrays of the wrong shape (another vocabulary)."""
        ref = cls.empty()
        names = ("hist", "counts", "n_subjects", "n_stays")
        try:
            raw = [np.asarray(arrays[k]) for k in names]
        except (KeyError, ValueError, TypeError) as exc:
            raise ClinJepaError(f"site statistics: malformed arrays ({exc!r}); expected keys "
                                "hist, counts, n_subjects, n_stays") from None
        # Counts are integers: a float array (NaN, inf, 0.5) would be cast silently to garbage.
        if bad := [k for k, a in zip(names, raw, strict=True) if a.dtype.kind not in "iu"]:
            raise ClinJepaError(f"site statistics: {', '.join(bad)} must be integer counts, got "
                                f"{', '.join(str(a.dtype) for a in raw if a.dtype.kind not in 'iu')}")
        if raw[2].size != 1 or raw[3].size != 1:
            raise ClinJepaError("site statistics: n_subjects and n_stays must be one number each")
        hist, counts = raw[0].astype(np.int64), raw[1].astype(np.int64)
        n_subjects, n_stays = int(raw[2].reshape(-1)[0]), int(raw[3].reshape(-1)[0])
        if hist.shape != ref.hist.shape or counts.shape != ref.counts.shape:
            raise ClinJepaError(f"site statistics: shapes hist {hist.shape}, counts {counts.shape} do not "
                                f"match this vocabulary ({ref.hist.shape}, {ref.counts.shape})")
        if (hist < 0).any() or (counts < 0).any() or min(n_subjects, n_stays) < 0:
            raise ClinJepaError("site statistics: negative counts")
        # Bounded so that summing the sites can never overflow int64 (and no site is 10^12 patients).
        if max(int(hist.max(initial=0)), int(counts.max(initial=0)), n_subjects, n_stays) > MAX_COUNT:
            raise ClinJepaError(f"site statistics: a count above {MAX_COUNT} is not a hospital's")
        return cls(hist, counts, n_subjects, n_stays)

    def __add__(self, other: SiteStatistics) -> SiteStatistics:
        def both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else a + b

        return SiteStatistics(self.hist + other.hist, self.counts + other.counts,
                              self.n_subjects + other.n_subjects, self.n_stays + other.n_stays,
                              both(self.cell_patients, other.cell_patients),
                              both(self.concept_patients, other.concept_patients),
                              both(self.patient_mass, other.patient_mass))

    def add_values(self, concept: np.ndarray, value: np.ndarray, subject: np.ndarray | None = None) -> None:
        """Count canonical values of measurement concepts (indices into the canonical order) in place;
        with ``subject`` (one id per value, every value of a subject in this call) also the distinct
        patients per cell and per concept."""
        table = load_concepts()
        m = len(table.measurements)
        self.counts += np.bincount(concept[concept >= 0], minlength=len(table.names)).astype(np.int64)
        ok = (concept >= 0) & (concept < m) & np.isfinite(value)
        c, v = concept[ok].astype(np.int64), value[ok]
        lo = np.array([x.lo for x in table.measurements])[c]
        hi = np.array([x.hi for x in table.measurements])[c]
        cell = np.clip(np.floor((v - lo) / (hi - lo) * HIST_CELLS), 0, HIST_CELLS - 1).astype(np.int64)
        self.hist += np.bincount(c * HIST_CELLS + cell, minlength=m * HIST_CELLS).reshape(m, HIST_CELLS)
        if subject is not None:
            if self.cell_patients is None or self.concept_patients is None or self.patient_mass is None:
                raise ClinJepaError("site statistics: patients per cell are kept only from empty() on")
            # each (patient, concept) pair's values weigh 1 / their number: the patient's row sums to 1
            _, pair, n_pair = np.unique(np.stack([subject[ok].astype(np.int64), c]), axis=1,
                                        return_inverse=True, return_counts=True)
            self.patient_mass += np.bincount(c * HIST_CELLS + cell, weights=1.0 / n_pair[pair.reshape(-1)],
                                             minlength=m * HIST_CELLS).reshape(m, HIST_CELLS)
            self.cell_patients += _distinct_per(subject[ok], c * HIST_CELLS + cell, m * HIST_CELLS).reshape(
                m, HIST_CELLS)
            known = concept >= 0
            self.concept_patients += _distinct_per(subject[known], concept[known].astype(np.int64),
                                                   len(table.names))

    def suppressed(self, min_patients: int) -> SiteStatistics:
        """What may leave the site: every histogram cell and concept count behind fewer than
        ``min_patients`` distinct patients set to 0 (counted in patients, not events); nothing at all when
        the site has fewer patients. Edges computed from the merged result are shared by every site."""
        if self.cell_patients is None or self.concept_patients is None:
            raise ClinJepaError("site statistics: patients per cell were not computed; cannot suppress")
        if self.n_subjects < min_patients:
            return SiteStatistics(np.zeros_like(self.hist), np.zeros_like(self.counts))
        return SiteStatistics(np.where(self.cell_patients >= min_patients, self.hist, 0),
                              np.where(self.concept_patients >= min_patients, self.counts, 0),
                              self.n_subjects, self.n_stays)


def _distinct_per(subject: np.ndarray, key: np.ndarray, size: int) -> np.ndarray:
    """Number of distinct subjects per key value (0..size-1)."""
    pairs = np.unique(np.stack([key, subject.astype(np.int64)]), axis=1)
    return np.bincount(pairs[0], minlength=size).astype(np.int64)


def merge_statistics(stats: list[SiteStatistics]) -> SiteStatistics:
    """Sum of site statistics (associative and commutative)."""
    out = SiteStatistics.empty()
    for s in stats:
        out = out + s
    return out


def compute_site_statistics(cfg: SiteConfig) -> SiteStatistics:
    """Histograms of the train split's canonical values, streamed shard by shard.

    Counts every mapped, timed event of train subjects (not only those inside stays), so the edges do
    not depend on the stay definition; ``n_subjects`` counts train subjects with at least one timed
    event, ``n_stays`` their eligible stays.
    """
    check_site_catalog(cfg.site, cfg.concept_catalog)
    splits = read_splits(cfg.data_path)
    train_ids = np.array(sorted(s for s, code in splits.items() if code == SPLIT_CODE["train"]), np.int64)
    mapper = CodeMapper(cfg)
    out = SiteStatistics.empty()
    seen = np.zeros(0, np.int64)
    for shard in iter_shards(cfg.data_path):
        # patients per cell and each patient's bounded contribution assume all of a patient's rows in
        # one shard (MEDS); a patient counted in two shards would count twice
        if np.isin(here := np.unique(shard.subject), seen).any():
            raise ClinJepaError(f"{cfg.data_path}: a subject appears in more than one shard (MEDS keeps a "
                                "subject in one shard); run `clin-jepa validate` on the site's data")
        seen = np.union1d(seen, here)
        h = harmonize(shard, mapper)
        # split membership is looked up once per run of equal subject_id (MEDS keeps subjects together)
        run = np.flatnonzero(np.r_[True, shard.subject[1:] != shard.subject[:-1]])
        in_train = np.isin(shard.subject[run], train_ids)
        timed = shard.time != NAT
        train = np.flatnonzero(np.repeat(in_train, np.diff(np.r_[run, len(shard)])) & timed)
        out.add_values(h.concept[train], h.value[train], shard.subject[train])
        timed_run = np.add.reduceat(timed, run) > 0 if len(run) else np.zeros(0, bool)
        out.n_subjects += len(np.unique(shard.subject[run][in_train & timed_run]))
        stays = find_stays(h)
        out.n_stays += int((stays.eligible & np.isin(stays.subject, train_ids)).sum())
    return out


# ---- cache: a site computes its statistics once per version of its data --------------------------------
STATS_CACHE_VERSION = 2
_STATS_FIELDS = ("hist", "counts", "cell_patients", "concept_patients", "patient_mass")


def statistics_cache_key(cfg: SiteConfig) -> str:
    """sha256 over everything :func:`compute_site_statistics` depends on: the data files' names, sizes and
    mtimes (and the splits file's), the site's mapping (with declared conversions), stay definition and
    data-quality policies, the concept catalog in use (its fingerprint), and the histogram grid."""
    root = cfg.data_path
    paths = [*shard_paths(root), splits_path(root)]
    stat = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.exists()]
    content = {
        "version": STATS_CACHE_VERSION, "cells": HIST_CELLS, "files": stat,
        "concepts": load_concepts().fingerprint(),
        "mapping": mapping_key(cfg),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def mapping_key(cfg: SiteConfig) -> dict:
    """Everything in a site config that changes what is read from its data (cache keys include it)."""
    return {"site": cfg.site, "stay": asdict(cfg.stay), "quality": asdict(cfg.data_quality),
            "ignore": list(cfg.ignore_codes),
            "code_map": [[r.pattern, r.regex, r.concept, r.unit, r.scale, r.offset] for r in cfg.code_map]}


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes: a cache file is used only if it matches."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load_statistics(path: Path) -> SiteStatistics | None:
    """The statistics in ``path``, or None if the file is missing, unreadable, fails its digest or does
    not fit this vocabulary."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {f: z[f] for f in (*_STATS_FIELDS, "n")}
            digest = str(z["digest"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if digest != array_digest(arrays):
        return None
    ref = SiteStatistics.empty()
    if any(arrays[f].shape != getattr(ref, f).shape or arrays[f].dtype != getattr(ref, f).dtype
           for f in _STATS_FIELDS):
        return None
    n_subjects, n_stays = (int(x) for x in arrays["n"])
    return SiteStatistics(arrays["hist"], arrays["counts"], n_subjects, n_stays, arrays["cell_patients"],
                          arrays["concept_patients"], arrays["patient_mass"])


def site_statistics(cfg: SiteConfig, use_cache: bool = True) -> SiteStatistics:
    """:func:`compute_site_statistics`, kept in ``cfg.state_dir/cache/statistics-<key>.npz`` (at the site,
    next to the tensor cache; with the patients per cell, which never leave it): a site answers every
    statistics round after the first from the file, without reading its data again. A file that cannot
    be read or fails its digest is recomputed and overwritten, never trusted."""
    path = Path(cfg.state_dir) / "cache" / f"statistics-{statistics_cache_key(cfg)}.npz"
    if use_cache:
        cached = _load_statistics(path)
        if cached is not None:
            return cached
    stats = compute_site_statistics(cfg)
    if use_cache:
        arrays = {f: np.ascontiguousarray(getattr(stats, f)) for f in _STATS_FIELDS}
        arrays["n"] = np.array([stats.n_subjects, stats.n_stays], np.int64)
        buf = io.BytesIO()
        np.savez(buf, digest=np.array(array_digest(arrays)), **arrays)
        atomic_write_bytes(path, buf.getvalue())
    return stats


@dataclass(frozen=True)
class Discretization:
    """The shared value discretization: vocabulary and, per concept, ``n_bins - 1`` increasing edges.

    A value ``v`` of concept ``c`` falls in bin ``1 + searchsorted(edges[c], v, side="right")``
    (1..n_bins; 0 is reserved for "not observed").
    """

    concepts: tuple[str, ...]
    treatments: tuple[str, ...]
    n_bins: int = DEFAULT_BINS
    edges: dict[str, np.ndarray] = field(default_factory=dict)
    catalog: str = ""  # fingerprint of the concept catalog it was computed under ("" = before catalogs)

    def to_dict(self) -> dict:
        out = {"concepts": list(self.concepts), "treatments": list(self.treatments), "n_bins": self.n_bins,
               "edges": {c: [float(x) for x in self.edges[c]] for c in self.concepts}}
        if self.catalog:  # absent for discretizations from before catalogs, so their fingerprints hold
            out["catalog"] = self.catalog
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Discretization:
        try:
            concepts = tuple(str(c) for c in d["concepts"])
            edges = {c: np.asarray(d["edges"][c], dtype=np.float64) for c in concepts}
            disc = cls(concepts, tuple(str(t) for t in d["treatments"]), int(d["n_bins"]), edges,
                       str(d.get("catalog", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ClinJepaError(f"discretization: malformed ({exc!r}); expected concepts, treatments, "
                                "n_bins, edges") from None
        for c, e in edges.items():
            if e.shape != (disc.n_bins - 1,) or (np.diff(e) < 0).any():
                raise ClinJepaError(f"discretization: edges of {c!r} must be {disc.n_bins - 1} "
                                    "non-decreasing numbers")
        return disc

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form; equal iff two discretizations tokenize identically."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def quantile_edges(stats: SiteStatistics, n_bins: int = DEFAULT_BINS) -> Discretization:
    """Equal-frequency edges from histograms (pure; linear interpolation inside a cell).

    The vocabulary is the canonical order filtered to measurement concepts with at least one value;
    treatments are always the full canonical list so the model's treatment width never varies.
    Edges strictly increase because every quantile lands in a cell with positive mass.
    """
    if n_bins < 2:
        raise ClinJepaError(f"n_bins: must be >= 2, got {n_bins}")
    table = load_concepts()
    qs = np.arange(1, n_bins) / n_bins
    concepts, edges = [], {}
    for i, concept in enumerate(table.measurements):
        h = stats.hist[i].astype(np.float64)
        total = h.sum()
        if total <= 0:
            continue
        cum = np.cumsum(h)
        target = qs * total
        cell = np.searchsorted(cum, target, side="left")
        before = np.where(cell > 0, cum[cell - 1], 0.0)
        frac = (target - before) / h[cell]
        width = (concept.hi - concept.lo) / HIST_CELLS
        concepts.append(concept.name)
        edges[concept.name] = concept.lo + (cell + frac) * width
    return Discretization(tuple(concepts), table.treatment_names, n_bins, edges, table.fingerprint())
