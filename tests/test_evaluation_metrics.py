"""Metric functions on hand-made latents and labels whose answers are known in advance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from clin_jepa.evaluation.baselines import GRUSettings, gru_baseline, hourly_inputs, last_value_features
from clin_jepa.evaluation.drift import (
    autoregressive_rollout,
    copy_gap,
    drift_curve,
    drift_summary,
    relative_change,
    rollout_against_copy,
)
from clin_jepa.evaluation.geometry import (
    DETERIORATING,
    STABLE,
    UNDEFINED,
    cohorts,
    displacement,
    displacement_ratio,
    projection_2d,
)
from clin_jepa.evaluation.probes import DEFAULT_C, PROBE_CS, bootstrap_ci, fit_linear_probes

RNG = np.random.default_rng(0)


def _walk(n=20, h=48, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(n, h, d)), axis=1)


def test_perfect_predictor_has_zero_drift():
    z = _walk()
    valid = np.ones(z.shape[:2], bool)
    curve, counts = drift_curve(z, z, valid)
    assert np.all(curve == 0.0) and np.all(counts == 20)


def test_diverging_predictor_grows_and_converging_one_shrinks():
    z = _walk()
    valid = np.ones(z.shape[:2], bool)
    hours = np.arange(1, 49)[None, :, None]
    diverging = z + 0.1 * hours * RNG.choice([-1, 1], size=z.shape)
    curve, _ = drift_curve(diverging, z, valid)
    assert np.all(np.diff(curve) > 0)
    assert relative_change(curve) > 0
    converging = z + (1.0 / hours) * RNG.choice([-1, 1], size=z.shape)
    curve2, _ = drift_curve(converging, z, valid)
    assert relative_change(curve2) < 0
    # exact value: |err| is 1/h on every coordinate
    early = np.mean(1.0 / np.arange(1, 7))
    late = np.mean(1.0 / np.arange(43, 49))
    assert relative_change(curve2) == pytest.approx((late - early) / early)


def test_drift_curve_ignores_hours_outside_the_stay():
    z = np.zeros((2, 48, 4))
    pred = np.zeros_like(z)
    pred[1, 10:] = 100.0  # garbage after stay 1 ended
    valid = np.ones((2, 48), bool)
    valid[1, 10:] = False
    curve, counts = drift_curve(pred, z, valid)
    assert np.all(curve == 0.0)
    assert counts[9] == 2 and counts[10] == 1
    valid[:, 47] = False
    curve, _ = drift_curve(pred, z, valid)
    assert np.isnan(curve[47])


def test_copy_gap_is_paired_and_ties_are_not_losses():
    rng = np.random.default_rng(0)
    n, h, d = 400, 3, 8
    target = rng.normal(size=(n, h, d))
    copy = target + rng.normal(size=(n, h, d)) * rng.uniform(0.5, 3.0, size=(n, 1, 1))  # stays differ a lot
    pred = copy.copy()
    pred[:, 1] = target[:, 1] + (copy[:, 1] - target[:, 1]) * 0.9  # 10 % closer on every stay
    pred[:, 2] = target[:, 2] + (copy[:, 2] - target[:, 2]) * 1.01  # 1 % further on every stay
    valid = np.ones((n, h), bool)
    valid[1:, 0] = False  # hour 1: a single stay, no spread to judge by
    mean, se = copy_gap(pred, copy, target, valid)
    err = lambda p: np.abs(p - target).mean(axis=2)  # noqa: E731
    np.testing.assert_allclose(mean[1:], (err(pred) - err(copy)).mean(axis=0)[1:])
    assert np.isnan(mean[0]) and np.isnan(se[0])
    # pairing: the stays' own spread (x6 between them) cancels, so a 1 % loss on each is seen
    assert mean[1] + 1.96 * se[1] < 0 and mean[2] - 1.96 * se[2] > 0
    curve, counts, copy_curve, gap = rollout_against_copy(pred, copy, target, valid)  # one pass, same figures
    np.testing.assert_array_equal(curve, drift_curve(pred, target, valid)[0])
    np.testing.assert_array_equal(copy_curve, drift_curve(copy, target, valid)[0])
    np.testing.assert_array_equal(counts, valid.sum(axis=0))
    np.testing.assert_array_equal(gap[0][1:], mean[1:])
    np.testing.assert_array_equal(gap[1][1:], se[1:])
    tie = copy_gap(copy, copy, target, np.ones((n, h), bool))
    assert np.all(tie[0] == 0) and np.all(tie[1] == 0)
    gap = (np.array([0.0, -0.1, 0.1, 0.001]), np.array([0.0, 0.01, 0.01, 0.01]))
    summary = drift_summary(np.ones(4), np.full(4, 10), np.ones(4), gap)
    # below copy (-0.1), an exact tie (0.0) and one within the interval (0.001) count; a loss the interval
    # shows (0.1) does not
    assert summary["hours_not_worse_than_copy"] == 3


def test_relative_change_undefined_without_scale():
    assert np.isnan(relative_change(np.zeros(48)))
    assert np.isnan(relative_change(np.full(48, np.nan)))


def test_rollout_feeds_back_its_own_predictions():
    # predictor "next = last + 1" on a scalar latent: rolling from context value c gives c+1, c+2, ...
    def predictor(z, batch):
        assert batch["bins"].shape[1] == z.shape[1]
        return z + 1.0

    z0 = torch.zeros(3, 24, 2)
    z0[:, -1] = 5.0
    batch = {"bins": torch.zeros(3, 72, 4, dtype=torch.long), "labels": torch.zeros(3, 8)}
    out = autoregressive_rollout(predictor, z0, batch, horizon=48)
    assert out.shape == (3, 48, 2)
    assert torch.allclose(out[0, :, 0], 5.0 + torch.arange(1, 49, dtype=torch.float32))


def test_cohorts_from_labels():
    nan = np.nan
    labels = np.array([[0, 0, nan], [0, 1, nan], [nan, nan, nan], [1, nan, 0], [0, 0, 0]])
    assert cohorts(labels).tolist() == [STABLE, DETERIORATING, UNDEFINED, DETERIORATING, STABLE]


def test_displacement_and_ratio_of_constructed_cohorts():
    n, t, d = 6, 72, 3
    z = np.zeros((n, t, d))
    mask = np.ones((n, t), bool)
    # stable stays move 1 unit after hour 23, deteriorating ones 3 units; one of them ends at hour 40
    z[:3, 24:, 0] = 1.0
    z[3:, 24:, 0] = 3.0
    mask[5, 41:] = False
    z[5, 41:, 0] = 100.0  # outside the stay: must not count
    cohort = np.array([STABLE] * 3 + [DETERIORATING] * 3)
    disp = displacement(z, mask)
    assert disp == pytest.approx([1, 1, 1, 3, 3, 3])
    assert displacement(z, mask, window=1) == pytest.approx(disp)
    # windows average: a stay that climbs 0..47 over the horizon, 6-hour end window = hours 66..71
    z2 = np.zeros((1, t, 1))
    z2[0, 24:, 0] = np.arange(48)
    m2 = np.ones((1, t), bool)
    assert displacement(z2, m2, window=6)[0] == pytest.approx(np.mean(np.arange(42, 48)))
    assert displacement(z2, m2, window=1)[0] == pytest.approx(47)
    r = displacement_ratio(disp, cohort)
    assert r["ratio"] == pytest.approx(3.0)
    assert (r["n_stable"], r["n_deteriorating"]) == (3, 3)
    # a stay that ends at the prediction time has no displacement
    mask[0, 24:] = False
    assert np.isnan(displacement(z, mask)[0])
    assert np.isnan(displacement_ratio(disp, np.full(n, STABLE))["ratio"])


def test_projection_is_2d():
    z = _walk(n=10, h=72)
    proj = projection_2d(z, np.ones((10, 72), bool))
    assert proj.shape == (10, 72, 2) and np.isfinite(proj).all()


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    def sample(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, n)
        return y, y * 1.0 + rng.normal(scale=1.0, size=n)

    widths = []
    for n in (60, 1000):
        y, s = sample(n, 1)
        lo, hi = bootstrap_ci(y, s, roc_auc_score, n_boot=100, seed=3)
        assert lo <= roc_auc_score(y, s) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    # seeded: same interval twice
    y, s = sample(100, 2)
    assert bootstrap_ci(y, s, roc_auc_score, 50, 7) == bootstrap_ci(y, s, roc_auc_score, 50, 7)


def test_probe_auroc_matches_sklearn_and_skips_single_class_tasks():
    rng = np.random.default_rng(5)
    n, d = 400, 5
    x = rng.normal(size=(n, d))
    y0 = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)
    y1 = np.zeros(n)  # single class everywhere
    y2 = rng.integers(0, 2, n).astype(float)
    y2[::3] = np.nan  # undefined for a third of the stays
    y = np.stack([y0, y1, y2], axis=1)
    res = fit_linear_probes(x[:300], y[:300], x[300:], y[300:], ["a", "b", "c"], n_boot=50)
    a, b, c = res.tasks
    assert a.auroc > 0.85 and a.auroc_ci[0] <= a.auroc <= a.auroc_ci[1]
    assert b.skipped and "single class" in b.skipped
    assert 0.3 < c.auroc < 0.7 and c.n_test == int(np.isfinite(y[300:, 2]).sum())
    assert res.mean_auroc == pytest.approx((a.auroc + c.auroc) / 2)
    # the same fit done by hand with sklearn gives the same AUROC
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[:300], y0[:300])
    assert a.auroc == pytest.approx(roc_auc_score(y0[300:], clf.predict_proba(x[300:])[:, 1]))


def test_probe_regularization_is_chosen_on_the_tuning_split_only():
    # one state seen through 100 noisy features and few train stays: C = 1 overfits the noise, so the
    # tuning split must pick a smaller C, and that must score better on held_out than the fixed default
    rng = np.random.default_rng(3)
    n, d = 900, 100
    state = rng.normal(size=n)
    x = state[:, None] + 3.0 * rng.normal(size=(n, d))
    y = (state + 0.5 * rng.normal(size=n) > 0).astype(float)[:, None]
    tr, tu, te = slice(0, 150), slice(150, 450), slice(450, n)
    fixed = fit_linear_probes(x[tr], y[tr], x[te], y[te], ["t"], n_boot=0).tasks[0]
    tuned = fit_linear_probes(x[tr], y[tr], x[te], y[te], ["t"], n_boot=0, tune=(x[tu], y[tu])).tasks[0]
    assert fixed.c == DEFAULT_C and tuned.c in PROBE_CS and tuned.c < DEFAULT_C
    assert tuned.auroc > fixed.auroc + 0.02
    # held_out labels never enter the choice: scrambling them leaves C unchanged
    scrambled = y.copy()
    scrambled[te] = rng.permutation(scrambled[te])
    again = fit_linear_probes(x[tr], y[tr], x[te], scrambled[te], ["t"], n_boot=0, tune=(x[tu], y[tu]))
    assert again.tasks[0].c == tuned.c
    # a tuning split with one class for the task cannot choose: the default is used
    one_class = fit_linear_probes(x[tr], y[tr], x[te], y[te], ["t"], n_boot=0,
                                  tune=(x[tu], np.zeros_like(y[tu]))).tasks[0]
    assert one_class.c == DEFAULT_C and one_class.auroc == pytest.approx(fixed.auroc)
    assert tuned.to_dict()["c"] == tuned.c


def _toy_stays(n=300, t=72, c=3, k=2, n_bins=4, seed=0):
    rng = np.random.default_rng(seed)
    bins = rng.integers(0, n_bins + 1, size=(n, t, c)).astype(np.int16)
    treat = (rng.random((n, t, k)) < 0.1).astype(np.float32)
    time = rng.random((n, t, 4)).astype(np.float32)
    # label: last observed bin of concept 0 in the first 24 h is high
    feats = last_value_features(bins, treat, time, n_bins)
    last0 = feats[:, : n_bins + 1].argmax(axis=1)
    y = (last0 >= 3).astype(np.float32)[:, None]
    return bins, treat, time, y, feats


def test_last_value_features_pick_last_observation_and_missing():
    bins = np.zeros((1, 72, 2), np.int16)
    bins[0, 3, 0], bins[0, 20, 0], bins[0, 30, 0] = 2, 4, 1  # hour 30 is after the prediction time
    treat, time = np.zeros((1, 72, 1), np.float32), np.full((1, 72, 4), 0.5, np.float32)
    feats = last_value_features(bins, treat, time, 4)
    assert feats.shape == (1, 2 * 5 + 2 + 2 + 1 + 1)
    assert feats[0, :5].tolist() == [0, 0, 0, 0, 1]  # concept 0: bin 4
    assert feats[0, 5:10].tolist() == [1, 0, 0, 0, 0]  # concept 1: never observed
    assert feats[0, 10:12].tolist() == [0, 0]  # neither measured in hour 23
    assert 0 < feats[0, 12] < 1 and feats[0, 13] == 1  # 3 h since concept 0; concept 1 never
    assert feats[0, -1] == 0.5


def test_gru_baseline_learns_a_learnable_task():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny network: extra threads only add contention
    torch.manual_seed(0)
    bins, treat, time, y, _ = _toy_stays()
    x = hourly_inputs(bins, treat, time, 4)
    res = gru_baseline(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], ["hi"], n_boot=20,
                       settings=GRUSettings(hidden=16, epochs=40, dropout=0.0, lr=3e-3))
    torch.set_num_threads(threads)
    assert res.tasks[0].auroc > 0.8


def test_report_writer_on_hand_made_metrics(tmp_path):
    import json

    from clin_jepa.evaluation.drift import drift_summary
    from clin_jepa.evaluation.report import PLOTS, write_report

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), (rng.random((200, 2)) < 0.4).astype(float)
    probes = fit_linear_probes(x[:100], y[:100], x[100:], y[100:], ["t1", "t2"], n_boot=10).to_dict()
    curve = np.linspace(1.0, 0.5, 48)
    curve[-1] = np.nan
    drift = drift_summary(curve, np.full(48, 10), np.full(48, 2.0))
    geo = {"displacement_per_task": 2.0, "tasks": {"t1": {"ratio": 1.5}, "t2": {"ratio": 2.5}},
           "hidden": {"ratio": 3.0}, "any_label": {"ratio": 1.1}}
    model = {"drift": drift, "geometry": geo, "probes": probes, "seed": 0}
    control = {**model, "step": 0, "probes": {**probes, "mean_auroc": probes["mean_auroc"] - 0.05}}
    model = {**model, "paired": {"untrained": "untrained@0", "seed": 0, "diff": 0.05, "diff_sd": 0.01}}
    metrics = {"settings": {"context": 24, "bootstrap": 10, "embedding": "e", "cohorts": "c"},
               "data": {"sites": ["a"], "discretization": "f" * 64, "tasks": ["t1", "t2"],
                        "n_stays": {"train": 100, "held_out": 100}},
               "models": {"m1@0": model, "untrained@0": control},
               "baselines": {"gru": {"probes": probes}}, "notes": ["hello"]}
    z = _walk(n=10, h=72)
    mask = np.ones((10, 72), bool)
    cohort = np.array([STABLE, DETERIORATING] * 5)
    proj = (projection_2d(z, mask), mask, cohort)
    files = write_report(tmp_path, metrics, {"m1@0": proj, "untrained@0": proj})
    assert {f.name for f in files} == {"metrics.json", "report.md", "report.html", *PLOTS}
    assert all(f.stat().st_size > 0 for f in files)
    loaded = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN became null
    assert loaded["models"]["m1@0"]["drift"]["curve"][-1] is None
    assert loaded["models"]["m1@0"]["drift"]["converges"] is True  # below 2.0 everywhere, late < early
    md = (tmp_path / "report.md").read_text()
    assert "| m1 | 0 |" in md and "s0: +0.050 ± 0.010" in md  # across seeds, with the paired noise
    assert "| m1@0 |" in md and "+0.050 ± 0.010 (vs untrained@0) | 2.000 | 3.000 | 1.100 |" in md
    assert "| m1@0 | 1.500 | 2.500 |" in md  # per-task displacement table
    assert "| gru |" in md and "hello" in md
    assert (tmp_path / PLOTS[0]).read_bytes()[:4] == b"\x89PNG"


def test_rollout_with_the_real_predictor_matches_teacher_forcing_on_step_one():
    from clin_jepa.models import ClinJEPA
    from clin_jepa.models.config import preset

    torch.manual_seed(0)
    model = ClinJEPA(preset("tiny", n_concepts=3, n_treatments=2, n_bins=4)).eval()
    b, t = 2, 30
    batch = {"bins": torch.randint(0, 5, (b, t, 3)), "treat": (torch.rand(b, t, 2) < 0.3).float(),
             "time": torch.rand(b, t, 4), "mask": torch.ones(b, t, dtype=torch.bool),
             "pos": torch.arange(t).expand(b, t).contiguous()}
    with torch.no_grad():
        z = model.encoder(batch)
        teacher = model.predictor(z, batch)  # row t guesses hour t+1, reading hour t+1's treatment
    roll = autoregressive_rollout(model.predictor, z[:, :24], batch, horizon=5)
    assert torch.allclose(roll[:, 0], teacher[:, 23], atol=1e-5)
    # the rollout reads the true treatments of the hour it predicts: changing them changes the guess
    batch2 = dict(batch, treat=batch["treat"].clone())
    batch2["treat"][:, 24] = 1.0 - batch2["treat"][:, 24]
    assert not torch.allclose(autoregressive_rollout(model.predictor, z[:, :24], batch2, 1)[:, 0], roll[:, 0])
