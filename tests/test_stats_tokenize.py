"""Mergeable statistics, quantile edges, hourly tokenization, the tensor cache and batches."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures import icu_patient, random_events
from hypothesis import given, settings
from hypothesis import strategies as st

from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.dataset import infinite_batches, make_loader
from clin_jepa.data.stats import (
    HIST_CELLS,
    Discretization,
    SiteStatistics,
    compute_site_statistics,
    merge_statistics,
    quantile_edges,
    site_statistics,
)
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import SiteTensors, build_site_tensors, tokenize_dataset
from clin_jepa.errors import ClinJepaError

TABLE = load_concepts()


@pytest.fixture
def two_sites_and_pool(make_site):
    a = random_events(30, seed=1, hours=40, every_h=3.0, first_id=1)
    b = random_events(25, seed=2, hours=40, every_h=3.0, first_id=1000)
    split = lambda df: {int(s): ("train" if s % 4 else "tuning") for s in df["subject_id"].unique()}  # noqa: E731
    pooled = pd.concat([a, b], ignore_index=True)
    return (make_site(a, split(a), name="a"), make_site(b, split(b), n_shards=2, name="b"),
            make_site(pooled, split(pooled), n_shards=3, name="pool"))


def test_merged_site_statistics_equal_statistics_of_pooled_data(two_sites_and_pool) -> None:
    a, b, pool = (compute_site_statistics(cfg) for cfg in two_sites_and_pool)
    merged = merge_statistics([a, b])
    for key, value in pool.to_arrays().items():
        np.testing.assert_array_equal(merged.to_arrays()[key], value)
    assert merged.n_subjects == pool.n_subjects > 0 and merged.n_stays == pool.n_stays > 0
    assert merge_statistics([b, a]).to_arrays()["hist"].sum() == merged.hist.sum() > 0


def test_quantile_edges_identical_from_pooled_data_or_merged_histograms(two_sites_and_pool) -> None:
    a, b, pool = (compute_site_statistics(cfg) for cfg in two_sites_and_pool)
    merged = SiteStatistics.from_arrays(merge_statistics([SiteStatistics.from_arrays(a.to_arrays()),
                                                          SiteStatistics.from_arrays(b.to_arrays())]
                                                         ).to_arrays())
    d_pool, d_merged = quantile_edges(pool, 10), quantile_edges(merged, 10)
    assert d_pool.fingerprint() == d_merged.fingerprint()
    # the fixtures record the 16 measurements of the original vocabulary; concepts without values drop out
    assert d_pool.concepts == TABLE.measurement_names[:16] and d_pool.treatments == TABLE.treatment_names
    for c in d_pool.concepts:
        assert np.all(np.diff(d_pool.edges[c]) > 0)


def test_quantile_edges_match_sample_quantiles_within_one_cell() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(90, 15, 20000)
    stats = SiteStatistics.empty()
    stats.add_values(np.full(len(values), TABLE.index("heart_rate"), np.int16), values)
    disc = quantile_edges(stats, 5)
    hr = TABLE.get("heart_rate")
    cell = (hr.hi - hr.lo) / HIST_CELLS
    np.testing.assert_allclose(disc.edges["heart_rate"], np.quantile(values, [0.2, 0.4, 0.6, 0.8]), atol=cell)
    assert disc.concepts == ("heart_rate",)  # only concepts with values are in the vocabulary


def test_values_outside_the_range_fall_in_the_edge_cells() -> None:
    stats = SiteStatistics.empty()
    i = TABLE.index("sodium")
    stats.add_values(np.array([i, i, i], np.int16), np.array([10.0, 140.0, 900.0]))
    assert stats.hist[i, 0] == 1 and stats.hist[i, -1] == 1 and stats.hist[i].sum() == 3
    assert stats.counts[i] == 3


def test_statistics_transport_round_trip_and_rejects_other_shapes() -> None:
    stats = SiteStatistics.empty()
    stats.add_values(np.array([0, 1, 16], np.int16), np.array([80.0, 120.0, np.nan]))
    stats.n_subjects, stats.n_stays = 3, 4
    back = SiteStatistics.from_arrays(stats.to_arrays())
    assert (back.hist == stats.hist).all() and (back.counts == stats.counts).all()
    assert (back.n_subjects, back.n_stays) == (3, 4) and back.counts[16] == 1
    with pytest.raises(ClinJepaError, match="do not match this vocabulary"):
        SiteStatistics.from_arrays({**stats.to_arrays(), "hist": np.zeros((3, HIST_CELLS), np.int64)})
    with pytest.raises(ClinJepaError, match="malformed"):
        SiteStatistics.from_arrays({"hist": stats.hist})


def test_discretization_dict_round_trip_and_fingerprint() -> None:
    disc = Discretization(("heart_rate",), ("vasopressor",), 3, {"heart_rate": np.array([70.0, 100.0])})
    again = Discretization.from_dict(disc.to_dict())
    assert again.fingerprint() == disc.fingerprint()
    changed = Discretization(("heart_rate",), ("vasopressor",), 3, {"heart_rate": np.array([70.0, 101.0])})
    assert changed.fingerprint() != disc.fingerprint()
    with pytest.raises(ClinJepaError, match="2 non-decreasing"):
        Discretization.from_dict({**disc.to_dict(), "edges": {"heart_rate": [1.0]}})


HR_EDGES = np.array([60.0, 70, 80, 90, 100, 110, 120, 130, 140])  # bin k covers [edge k-1, edge k)


def _handmade_disc() -> Discretization:
    names = TABLE.measurement_names[:16]  # the concepts the hand-made patients record
    edges = {c: np.linspace(TABLE.get(c).lo, TABLE.get(c).hi, 11)[1:-1] for c in names}
    edges["heart_rate"] = HR_EDGES
    return Discretization(names, TABLE.treatment_names, 10, edges)


def test_tokens_of_handmade_patients(handmade_site) -> None:
    tasks = load_tasks()
    t = tokenize_dataset(handmade_site, _handmade_disc(), tasks, hours=72)
    # rows: shard order (held_out, train, tuning), then subject and stay start
    assert t.subject_id.tolist() == [5, 5, 1, 2, 4]
    assert t.split.tolist() == [2, 2, 0, 0, 1]
    assert t.bins.shape == (5, 72, 16) and t.bins.dtype == np.int16
    assert t.treat.shape == (5, 72, 6) and t.time.shape == (5, 72, 4) and t.labels.shape == (5, 8)
    assert t.mask.sum(1).tolist() == [26, 40, 60, 30, 50]
    starts = ["2021-05-01", "2021-05-10", "2021-03-01 08:30", "2021-03-02 10:00", "2021-04-01"]
    assert t.stay_start.dtype == np.int64  # names the stay with subject_id (ground-truth joins)
    assert t.stay_start.tolist() == [pd.Timestamp(s).value // 1000 for s in starts]
    hr, temp, crea = (t.concepts.index(c) for c in ("heart_rate", "temperature", "creatinine"))
    s1 = 2
    assert t.bins[s1, 0, hr] == 1 + np.searchsorted(HR_EDGES, 90, side="right") == 5
    assert t.bins[s1, 1, temp] > 0 and t.bins[s1, 25, crea] > 0
    assert np.count_nonzero(t.bins[s1]) == 4  # hr, temperature, creatinine, sodium
    assert t.treat[s1, 2, t.treatments.index("vasopressor")] == 1.0 and t.treat[s1].sum() == 1.0
    # time features: hour/T, clock hour of 08:30 start -> hour 0 is 8 o'clock, age 60 years at admission
    assert t.time[s1, 3, 0] == pytest.approx(3 / 72)
    assert t.time[s1, 0, 1] == pytest.approx(np.sin(2 * np.pi * 8 / 24), abs=1e-6)
    assert t.time[s1, 4, 2] == pytest.approx(np.cos(2 * np.pi * 12 / 24), abs=1e-6)
    age = (pd.Timestamp("2021-03-01 08:30") - pd.Timestamp("1960-01-01")) / pd.Timedelta(days=365.25)
    assert t.time[s1, 0, 3] == pytest.approx(age / 100, rel=1e-5)


def test_last_value_in_the_hour_wins_and_out_of_stay_events_are_dropped(make_site) -> None:
    rows = icu_patient(1, "2021-01-01 00:00", 30, [(0.9, "heart_rate", 135), (0.1, "heart_rate", 65),
                                                   (0.5, "heart_rate", 95), (31, "heart_rate", 95)])
    t = tokenize_dataset(make_site(rows), _handmade_disc(), (), hours=48)
    hr = t.concepts.index("heart_rate")
    assert t.bins[0, 0, hr] == 9 and np.count_nonzero(t.bins[0, :, hr]) == 1  # 135 is last, 31 h is outside
    assert t.mask[0].sum() == 30 and t.labels.shape == (1, 0)


def test_subset_and_concat(handmade_site) -> None:
    t = tokenize_dataset(handmade_site, _handmade_disc(), load_tasks())
    train, tuning, held = t.subset("train"), t.subset("tuning"), t.subset("held_out")
    assert (len(train), len(tuning), len(held)) == (2, 1, 2)
    both = SiteTensors.concat([train, held])
    assert both.subject_id.tolist() == [1, 2, 5, 5] and both.concepts == t.concepts
    assert both.stay_start.tolist() == [*train.stay_start, *held.stay_start]
    assert len(SiteTensors.concat([held.take(np.array([], int)), held]).stay_start) == 2
    with pytest.raises(KeyError):
        t.subset("test")


def test_cache_hit_corrupt_rebuild_and_invalidation(handmade_site) -> None:
    disc, tasks = _handmade_disc(), load_tasks()
    first = build_site_tensors(handmade_site, disc, tasks)
    second = build_site_tensors(handmade_site, disc, tasks)
    assert (first.meta["cache"], second.meta["cache"]) == ("miss", "hit")
    for f in ("bins", "treat", "time", "mask", "split", "subject_id"):
        np.testing.assert_array_equal(getattr(first, f), getattr(second, f))
    np.testing.assert_array_equal(np.isnan(first.labels), np.isnan(second.labels))
    assert second.tasks == first.tasks and second.site == "site"
    files = sorted((handmade_site.state_dir / "cache").glob("tensors-*.npz"))
    assert len(files) == 1 and not list((handmade_site.state_dir / "cache").glob(".*tmp"))
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64  # corrupt the middle of the file
    files[0].write_bytes(bytes(data))
    rebuilt = build_site_tensors(handmade_site, disc, tasks)
    assert rebuilt.meta["cache"] == "miss" and (rebuilt.bins == first.bins).all()
    assert build_site_tensors(handmade_site, disc, tasks).meta["cache"] == "hit"
    files[0].write_bytes(b"garbage")
    assert build_site_tensors(handmade_site, disc, tasks).meta["cache"] == "miss"
    assert build_site_tensors(handmade_site, disc, tasks, hours=48).meta["cache"] == "miss"
    shard = next((handmade_site.data_path / "data").rglob("*.parquet"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert build_site_tensors(handmade_site, disc, tasks).meta["cache"] == "miss"


def test_statistics_cache_hit_corrupt_recompute_and_invalidation(handmade_site) -> None:
    """The statistics round reads a site's data once per version of it: later rounds (and runs) answer
    from the site's cache, which is never trusted when damaged and follows every change of the data."""
    fields = ("hist", "counts", "cell_patients", "concept_patients", "n_subjects", "n_stays")

    def same(a: SiteStatistics, b: SiteStatistics) -> bool:
        return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)

    fresh = compute_site_statistics(handmade_site)
    cache = handmade_site.state_dir / "cache"
    assert same(site_statistics(handmade_site), fresh)  # computed and stored
    (path,) = cache.glob("statistics-*.npz")
    stamp = path.stat().st_mtime_ns
    assert same(site_statistics(handmade_site), fresh) and path.stat().st_mtime_ns == stamp  # a hit
    assert same(site_statistics(handmade_site).suppressed(2), fresh.suppressed(2))
    for damage in (b"garbage", path.read_bytes()[:-40] + b"\xff" * 40):
        path.write_bytes(damage)
        assert same(site_statistics(handmade_site), fresh)  # recomputed, never trusted
        assert same(site_statistics(handmade_site), fresh)
    shard = next((handmade_site.data_path / "data").rglob("*.parquet"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    site_statistics(handmade_site)
    assert len(list(cache.glob("statistics-*.npz"))) == 2  # another version of the data, another file


def test_make_loader_yields_every_row_once_with_batch_first_inputs(handmade_site) -> None:
    t = tokenize_dataset(handmade_site, _handmade_disc(), load_tasks())
    batches = list(make_loader(t, batch_size=2, seed=3))
    assert [b["bins"].shape[0] for b in batches] == [2, 2, 1]
    b = batches[0]
    assert b["bins"].dtype == torch.long and b["treat"].dtype == torch.float32
    assert b["mask"].dtype == torch.bool
    assert b["pos"].shape == (2, 72) and b["pos"].is_contiguous() and (b["pos"][1] == torch.arange(72)).all()
    assert b["labels"].shape == (2, 8)
    seen = torch.cat([x["time"][:, 0, 3] for x in batches]).sort().values
    assert torch.allclose(seen, torch.from_numpy(np.sort(t.time[:, 0, 3])))
    again = list(make_loader(t, batch_size=2, seed=3))
    assert all(torch.equal(x["bins"], y["bins"]) for x, y in zip(batches, again, strict=True))
    plain = list(make_loader(t, batch_size=10, seed=0, shuffle=False))
    assert torch.equal(plain[0]["bins"], torch.from_numpy(t.bins.astype(np.int64)))
    sizes = [x["bins"].shape[0] for x in make_loader(t, batch_size=2, seed=1, poisson=True)]
    assert len(sizes) == 2 and all(0 <= s <= 5 for s in sizes)


def test_infinite_batches_are_a_function_of_seed_and_step(handmade_site) -> None:
    t = tokenize_dataset(handmade_site, _handmade_disc(), load_tasks())
    run = infinite_batches(t, batch_size=3, seed=7)
    first = [next(run) for _ in range(6)]
    resumed = infinite_batches(t, batch_size=3, seed=7, start_step=4)
    assert torch.equal(next(resumed)["bins"], first[4]["bins"])
    assert torch.equal(next(resumed)["time"], first[5]["time"])
    assert first[0]["bins"].shape == (3, 72, 16)
    other_seed = [next(infinite_batches(t, 3, 8, s))["time"] for s in range(6)]
    assert any(not torch.equal(x, y["time"]) for x, y in zip(other_seed, first, strict=True))


def _reference_tensors(df: pd.DataFrame, disc: Discretization, hours: int):
    """A slow, obvious re-implementation (pandas, loops over stays) to check the vectorized tokenizer."""
    from fixtures import END, LOCAL, START, TREATMENTS
    bins, treat, mask = [], [], []
    hour_us = np.timedelta64(1, "h")
    for _, g in df.sort_values(["subject_id", "time"], kind="stable").groupby("subject_id", sort=True):
        starts = g.loc[g["code"] == START, "time"].to_numpy()
        ends = g.loc[g["code"] == END, "time"].to_numpy()
        for start, end in zip(starts, ends, strict=True):
            if end - start < 24 * hour_us:
                continue
            b = np.zeros((hours, len(disc.concepts)), np.int16)
            k = np.zeros((hours, len(disc.treatments)), np.float32)
            inside = g[(g["time"] >= start) & (g["time"] < min(end, start + hours * hour_us))]
            for row in inside.itertuples():
                h = int((row.time - start) // hour_us)
                if row.code in LOCAL:
                    concept, _, factor = LOCAL[row.code]
                    v = float(row.numeric_value)
                    v = (v - 32) * 5 / 9 if factor is None else v / factor
                    j = disc.concepts.index(concept)
                    b[h, j] = 1 + np.searchsorted(disc.edges[concept], v, side="right")  # rows in time order
                elif row.code in TREATMENTS:
                    k[h, disc.treatments.index(TREATMENTS[row.code])] = 1.0
            bins.append(b)
            treat.append(k)
            mask.append(np.arange(hours) * hour_us < end - start)
    return np.stack(bins), np.stack(treat), np.stack(mask)


# few / many edges (two binning code paths) x rows in MEDS order / shuffled (the tokenizer must not rely
# on row order, but has a fast path for it)
@pytest.mark.parametrize(("n_bins", "shuffle"), [(7, True), (24, False), (7, False)])
def test_vectorized_tokens_equal_a_plain_reference_implementation(make_site, n_bins, shuffle) -> None:
    df = random_events(20, seed=5, hours=80, every_h=0.6, readmit=0.5)
    rows = df.sample(frac=1.0, random_state=0) if shuffle else df
    cfg = make_site(rows, dict.fromkeys(df["subject_id"].unique().tolist(), "train"))
    disc = quantile_edges(compute_site_statistics(cfg), n_bins=n_bins)
    got = tokenize_dataset(cfg, disc, load_tasks(), hours=72)
    bins, treat, mask = _reference_tensors(df, disc, 72)
    assert len(got) > 20  # readmissions present
    np.testing.assert_array_equal(got.mask, mask)
    np.testing.assert_array_equal(got.treat, treat)
    np.testing.assert_array_equal(got.bins, bins)
    assert (got.bins > 0).mean() > 0.5 and set(np.unique(got.bins)) == set(range(n_bins + 1))


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-50, 400, allow_nan=False), min_size=1, max_size=300),
       cuts=st.lists(st.integers(0, 300), max_size=4), n_bins=st.integers(2, 20))
def test_any_partition_of_values_merges_to_the_pooled_statistics(values, cuts, n_bins) -> None:
    concept = np.array([TABLE.index("heart_rate"), TABLE.index("glucose")] * len(values), np.int16)
    v = np.repeat(np.array(values), 2)
    pooled = SiteStatistics.empty()
    pooled.add_values(concept, v)
    parts = []
    for lo, hi in zip([0, *sorted(cuts)], [*sorted(cuts), len(v)], strict=True):
        part = SiteStatistics.empty()
        part.add_values(concept[lo:hi], v[lo:hi])
        parts.append(part)
    merged = merge_statistics(parts)
    assert (merged.hist == pooled.hist).all() and (merged.counts == pooled.counts).all()
    a, b = quantile_edges(merged, n_bins), quantile_edges(pooled, n_bins)
    assert a.fingerprint() == b.fingerprint()
    for c in a.concepts:
        assert np.all(np.diff(a.edges[c]) > 0) and len(a.edges[c]) == n_bins - 1


def test_infinite_batches_refuse_an_empty_split(handmade_site) -> None:
    t = tokenize_dataset(handmade_site, _handmade_disc(), load_tasks())
    empty = t.take(np.zeros(0, int))
    with pytest.raises(ClinJepaError, match="no eligible ICU stays"):
        next(infinite_batches(empty, batch_size=2, seed=0))
