"""Copy baseline, per-task and hidden cohorts, paired bootstrap noise, untrained controls, and the rule that
no read-out sees anything after the prediction time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import DataValidationError
from clin_jepa.evaluation.baselines import hourly_inputs, last_value_features
from clin_jepa.evaluation.drift import converges, copy_forward, drift_curve, drift_summary
from clin_jepa.evaluation.embed import encode, probe_features
from clin_jepa.evaluation.geometry import DETERIORATING, STABLE, UNDEFINED, per_task_ratios
from clin_jepa.evaluation.ground_truth import FILE_NAME, hidden_cohorts, read_ground_truth
from clin_jepa.evaluation.paired import group_of, mean_sd, summarize
from clin_jepa.evaluation.plots import rollout_verdict
from clin_jepa.evaluation.probes import bootstrap_mean_auroc


def test_copy_baseline_and_what_converges_means():
    z = np.zeros((4, 48, 3))
    z[:, :, 0] = np.linspace(0, 1, 48)  # the truth moves away from the hour-24 latent
    valid = np.ones((4, 48), bool)
    copy_curve, _ = drift_curve(copy_forward(np.zeros((4, 3)), 48), z, valid)
    assert copy_curve == pytest.approx(np.linspace(0, 1, 48) / 3)
    good = np.full(48, 0.0005)
    assert converges(good, copy_curve + 1e-3)
    uniformly_bad = np.full(48, 0.9)  # relative change 0, yet no better than copying
    assert drift_summary(uniformly_bad, np.full(48, 4), copy_curve)["relative_change"] == 0.0
    assert not converges(uniformly_bad, copy_curve)
    rising = np.linspace(0.01, 0.2, 48)  # below copy everywhere but grows: late > early
    assert not converges(rising, copy_curve + 0.5)
    s = drift_summary(good, np.full(48, 4), copy_curve + 1e-3)
    assert s["converges"] and s["hours_below_copy"] == 48 and s["copy_late"] > s["copy_early"]
    assert rollout_verdict(s) == "below copy at 48/48 hours, converges"
    # one hour short of copying and above it everywhere both fail to converge; the count tells them apart
    first_hour_short = good.copy()
    first_hour_short[0] = copy_curve[0] + 1.0
    assert rollout_verdict(drift_summary(first_hour_short, np.full(48, 4), copy_curve + 1e-3)) == (
        "below copy at 47/48 hours, does not converge")
    assert rollout_verdict(drift_summary(uniformly_bad, np.full(48, 4), copy_curve)).startswith(
        "below copy at 0/48 hours")
    # with the paired difference: the first hour a tie within its interval, so 48 hours are not worse
    gap = (np.r_[1e-4, np.full(47, -0.01)], np.full(48, 1e-3))
    assert rollout_verdict(drift_summary(first_hour_short, np.full(48, 4), copy_curve + 1e-3, gap)) == (
        "below copy at 47/48 hours (48 not worse, paired 95 %), does not converge")


def test_per_task_ratio_compares_positives_with_stays_negative_for_every_task():
    nan = np.nan
    disp = np.array([1.0, 1.0, 4.0, 2.0, 9.0, 3.0])
    labels = np.array([[0, 0], [0, nan], [1, 0], [0, 1], [1, 1], [nan, nan]])
    r = per_task_ratios(disp, labels, ["a", "b"])
    assert r["tasks"]["a"]["ratio"] == pytest.approx(6.5)  # (4 + 9) / 2 over stable mean 1
    assert r["tasks"]["b"]["ratio"] == pytest.approx(5.5)
    assert r["tasks"]["a"]["n_stable"] == 2  # all-undefined stay 5 is in no cohort
    assert r["displacement_per_task"] == pytest.approx(6.0)


def test_paired_bootstrap_noise_is_smaller_than_the_models_own():
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random((n, 2)) < 0.4).astype(float)
    y[::7, 1] = np.nan
    base = y + rng.normal(scale=1.2, size=y.shape)
    a = np.where(np.isfinite(y), base, np.nan)
    b = np.where(np.isfinite(y), base + rng.normal(scale=0.1, size=y.shape), np.nan)
    reps = bootstrap_mean_auroc(y, {"a": a, "b": b, "a2": a.copy()}, n_boot=60, seed=1)
    assert len(reps["a"]) == 60 and np.all(reps["a"] == reps["a2"])  # same resamples for every model
    assert np.std(reps["a"] - reps["b"]) < np.std(reps["a"]) / 3


def test_summary_pools_seeds_and_keeps_paired_differences():
    def run(auroc, seed, diff=None):
        m = {"seed": seed, "probes": {"mean_auroc": auroc, "mean_auroc_sd": 0.02},
             "geometry": {"displacement_per_task": 2.0 + seed, "hidden": None},
             "drift": {"early": 0.3, "late": 0.2, "copy_late": 0.5, "converges": seed != 2}}
        if diff is not None:
            m["paired"] = {"seed": seed, "diff": diff, "diff_sd": 0.01, "untrained_late": 0.9}
        return m

    models = {f"cur@{s}": run(0.7 + 0.01 * s, s, 0.03 + 0.01 * s) for s in range(3)}
    models.update({f"untrained@{s}": run(0.67, s) for s in range(3)})
    g = summarize(models)
    assert group_of("cur@2") == "cur" and group_of("local-a") == "local-a"
    assert g["cur"]["mean_auroc"][:2] == pytest.approx((0.71, 0.01)) and g["cur"]["mean_auroc"][2] == 3
    assert g["cur"]["paired_diff"][0] == pytest.approx(0.04)
    assert [p[0] for p in g["cur"]["paired_per_seed"]] == [0, 1, 2] and g["cur"]["converges"] == 2
    assert g["untrained"]["paired_per_seed"] == [] and np.isnan(g["cur"]["displacement_hidden"][0])
    assert np.isnan(mean_sd([0.5])[1]) and mean_sd([None, float("nan")])[2] == 0


def _truth_file(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                      "stay_start": pa.array([pd.Timestamp(r[1]).to_datetime64() for r in rows],
                                             pa.timestamp("us")),
                      "cohort": pa.array([r[2] for r in rows], pa.string()),
                      "deteriorating": pa.array([r[3] for r in rows], pa.bool_()),
                      "onset_hour": pa.array([30.0] * len(rows), pa.float32())})
    pq.write_table(table, folder / FILE_NAME)
    return folder


def test_hidden_cohorts_join_on_subject_and_stay_start(tmp_path):
    folder = _truth_file(tmp_path / "site", [(1, "2021-01-01 08:00", "stable", False),
                                             (1, "2021-02-01 00:00", "sepsis", True),
                                             (2, "2021-01-03 00:00", "aki", False)])
    truth = read_ground_truth(folder)
    starts = ("2021-02-01", "2021-01-01 08:00", "2021-01-03", "2021-05-05")
    us = [pd.Timestamp(t).value // 1000 for t in starts]
    got = hidden_cohorts(np.array([1, 1, 2, 2]), np.array(us), truth, "site")
    # sepsis that deteriorates, stable, a sick cohort that never deteriorates, no ground-truth row
    assert got.tolist() == [DETERIORATING, STABLE, UNDEFINED, UNDEFINED]
    with pytest.raises(DataValidationError, match="none of the 1 ICU stays"):
        hidden_cohorts(np.array([7]), np.array([0]), truth, "site")
    with pytest.raises(DataValidationError, match="no ground-truth file"):
        read_ground_truth(tmp_path / "elsewhere")
    pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64())}), folder / FILE_NAME)
    with pytest.raises(DataValidationError, match="missing column 'cohort'"):
        read_ground_truth(folder)


def _stays(n=6, t=72, c=5, k=3, n_bins=4, seed=0) -> SiteTensors:
    rng = np.random.default_rng(seed)
    return SiteTensors(bins=rng.integers(0, n_bins + 1, (n, t, c)).astype(np.int16),
                       treat=(rng.random((n, t, k)) < 0.2).astype(np.float32),
                       time=rng.random((n, t, 4)).astype(np.float32), mask=np.ones((n, t), bool),
                       labels=np.zeros((n, 2), np.float32), split=np.zeros(n, np.int8),
                       subject_id=np.arange(n))


def _future_changed(x: SiteTensors, context: int) -> SiteTensors:
    """Every input of hours >= context replaced: bins, treatments, time features, and the stay mask."""
    rng = np.random.default_rng(99)
    y = x.take(np.arange(len(x)))
    y.bins[:, context:] = rng.integers(0, 5, y.bins[:, context:].shape)
    y.treat[:, context:] = 1.0 - y.treat[:, context:]
    y.time[:, context:] = rng.random(y.time[:, context:].shape)
    y.mask[::2, context + 3:] = False
    return y


def test_no_read_out_sees_past_the_prediction_time(one_thread):
    from clin_jepa.models import ClinJEPA
    from clin_jepa.models.config import preset

    torch.manual_seed(0)
    model = ClinJEPA(preset("tiny", n_concepts=5, n_treatments=3, n_bins=4)).eval()
    ctx = 24
    x = _stays()
    y = _future_changed(x, ctx)
    ex, ey = (encode(model, t, context=ctx, horizon=48, batch_size=4) for t in (x, y))
    # the perturbation reaches the model: the rollout (drift only) reads future treatments
    assert not np.allclose(ex.rollout, ey.rollout)
    np.testing.assert_allclose(probe_features(ex.target, ctx), probe_features(ey.target, ctx),
                               rtol=0, atol=1e-6)
    for feats in (last_value_features, hourly_inputs):  # the baselines' read-outs
        np.testing.assert_array_equal(feats(x.bins, x.treat, x.time, 4, ctx),
                                      feats(y.bins, y.treat, y.time, 4, ctx))
    # and the check is not vacuous: a change inside the context does move the features
    z = x.take(np.arange(len(x)))
    z.bins[:, ctx - 1] = (z.bins[:, ctx - 1] % 4) + 1
    assert not np.allclose(probe_features(encode(model, z, context=ctx, horizon=None).target, ctx),
                           probe_features(ex.target, ctx))
