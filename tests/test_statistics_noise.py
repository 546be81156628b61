"""Calibrated noise on the statistics round (``privacy.statistics_epsilon``): one patient's contribution
is bounded by the stated sensitivity, the noise has the stated scale, its ε is checked by an independent
computation (the analytic Gaussian mechanism), it is spent in the site's ledger before the reply leaves,
a site whose lifetime budget cannot cover it refuses, and the bins derived from noisy replies are valid."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata
from scipy.stats import norm

from clin_jepa.cli import main as cli
from clin_jepa.config import load_site_config
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.stats import SiteStatistics, merge_statistics, quantile_edges, site_statistics
from clin_jepa.errors import ConfigError, PrivacyBudgetExceeded
from clin_jepa.privacy import DPSettings, PrivacyLedger, compute_epsilon
from clin_jepa.privacy.statistics import gaussian_release, noise_multiplier, release_vector, sensitivity


def _analytic_delta(epsilon: float, z: float) -> float:
    """δ(ε) of the Gaussian mechanism with noise multiplier z (Balle & Wang 2018, Theorem 8): exact, and
    computed without Opacus."""
    return float(norm.cdf(0.5 / z - epsilon * z) - np.exp(epsilon) * norm.cdf(-0.5 / z - epsilon * z))


def _stats(values: dict[str, tuple[np.ndarray, np.ndarray]]) -> SiteStatistics:
    """Statistics of concept -> (values, subject ids)."""
    table = load_concepts()
    out = SiteStatistics.empty()
    for name, (v, subj) in values.items():
        out.add_values(np.full(len(v), table.index(name)), v.astype(float), subj)
    out.n_subjects = len({int(s) for _, subj in values.values() for s in subj})
    return out


def test_one_patient_moves_the_release_by_at_most_the_stated_sensitivity():
    rng = np.random.default_rng(0)
    names = [c.name for c in load_concepts().measurements]
    crowd = {n: (rng.uniform(0, 200, 400), rng.integers(0, 100, 400)) for n in names}
    # patient 999: 2000 values of every concept, all in one cell (event counts would move by 2000 there)
    heavy = {n: (np.r_[v, np.full(2000, 50.0)], np.r_[s, np.full(2000, 999)]) for n, (v, s) in crowd.items()}
    without, with_heavy = _stats(crowd), _stats(heavy)
    distance = np.linalg.norm(release_vector(with_heavy) - release_vector(without))
    bound = sensitivity(len(names))
    assert 0.9 * bound < distance <= bound + 1e-9  # the bound holds and this patient nearly reaches it
    assert np.abs(with_heavy.hist - without.hist).max() == 2000  # what raw event counts would have leaked


def test_noise_scale_matches_the_stated_sensitivity_and_epsilon():
    z = noise_multiplier(1.0, 1e-5)
    assert _analytic_delta(1.0, z) <= 1e-5  # the release is (1, 1e-5)-DP by an independent computation
    assert _analytic_delta(1.0, z / 2) > 1e-5  # and half the noise would not be
    stats = SiteStatistics.empty()
    draws = [gaussian_release(stats, z, np.random.default_rng(seed)) for seed in range(20)]
    residual = np.concatenate([noisy - release_vector(stats) for noisy, _ in draws])
    sigma = z * sensitivity(len(load_concepts().measurements))
    assert all(abs(s - sigma) < 1e-12 for _, s in draws)
    # ~20 000 draws: the sample sd is within 2 % of sigma with probability > 0.9999 (its sd is 0.5 %)
    assert abs(residual.std() / sigma - 1) < 0.02
    assert abs(residual.mean()) < 4 * sigma / np.sqrt(len(residual))


def _site(tmp_path, patients: int, **privacy: object):
    assert cli(["synth", "--out", str(tmp_path), "--sites", "1", "--patients", str(patients),
                "--seed", "4"]) == 0
    path = tmp_path / "hospital_a.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["privacy"] = privacy
    path.write_text(yaml.safe_dump(raw))
    return path


def _query(site, min_patients: int = 3) -> Message:
    from client.client_app import app

    node_config = {"site-config": str(site), "min-patients": min_patients}
    run_config = {"site-configs": str(site), "synth-if-missing": False}
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)
    meta = Metadata(run_id=1, message_id="s", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id="0", created_at=time.time(), ttl=3600.0, message_type="query.statistics")
    return app(Message(RecordDict({"config": ConfigRecord({"what": "statistics"})}), metadata=meta), context)


def _ledgers(state_dir) -> dict[str, list]:
    return {p.name: PrivacyLedger.load(p).history for p in (state_dir / "privacy").glob("*.json")}


@pytest.mark.timeout(300)
def test_the_statistics_epsilon_is_spent_in_the_ledger_before_the_reply_and_once(tmp_path):
    site = _site(tmp_path, 300, target_epsilon=20.0, statistics_epsilon=8.0)
    state = load_site_config(site).state_dir
    reply = _query(site)
    assert not reply.has_error()
    (name, history), = _ledgers(state).items()
    z = noise_multiplier(8.0, 1e-5)
    assert name.startswith("statistics+") and history == [(z, 1.0, 1)]
    assert 7.5 < compute_epsilon(history, 1e-5) <= 8.0
    metrics = reply.content["metrics"]
    assert metrics["statistics-epsilon"] == pytest.approx(compute_epsilon(history, 1e-5))
    assert metrics["statistics-noise-sd"] == pytest.approx(z * sensitivity(len(load_concepts().measurements)))
    noisy = SiteStatistics.from_arrays({k: v.numpy() for k, v in reply.content["statistics"].items()})
    assert not noisy.counts.any() and noisy.n_stays == 0  # unbounded per patient: never released
    exact = site_statistics(load_site_config(site))
    assert abs(noisy.n_subjects - exact.n_subjects) < 6 * metrics["statistics-noise-sd"]
    again = _query(site)  # asked again: the same release, nothing more spent
    assert all(np.array_equal(v.numpy(), reply.content["statistics"][k].numpy())
               for k, v in again.content["statistics"].items())
    assert _ledgers(state) == {name: history}
    # a DP training run on this site composes with the statistics release in its lifetime ε
    dp = DPSettings(target_epsilon=20.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=5.0,
                    lifetime_epsilon=20.0, lifetime_delta=1e-5)
    run = PrivacyLedger.open(state, site="hospital_a", run_id="r1", settings=dp, rate=0.1, planned_steps=1)
    assert run.lifetime_epsilon_spent() == pytest.approx(compute_epsilon(history, 1e-5))
    # the shared bins the server derives from noisy replies are valid (every edge strictly increasing)
    disc = quantile_edges(merge_statistics([noisy]), 10)
    assert len(disc.concepts) >= 8 and all(np.all(np.diff(e) > 0) for e in disc.edges.values())
    measured = {c.name for c, row in zip(load_concepts().measurements, exact.hist, strict=True) if row.any()}
    assert set(disc.concepts) <= measured  # a concept the site never measured does not arrive on noise


@pytest.mark.timeout(300)
def test_a_site_whose_lifetime_budget_cannot_cover_the_release_refuses(tmp_path):
    site = _site(tmp_path, 40, target_epsilon=1.0, statistics_epsilon=1.0)
    state = load_site_config(site).state_dir
    # an earlier DP run at this site spent ε ≈ 0.51 of its lifetime budget of 1.0
    dp = DPSettings(target_epsilon=1.0, delta=1e-5, max_grad_norm=1.0, noise_multiplier=8.0)
    earlier = PrivacyLedger.open(state, site="hospital_a", run_id="r0", settings=dp, rate=0.5,
                                 planned_steps=4)
    earlier.reserve(1, 4)
    before = _ledgers(state)
    # raised through the ClientApp's mods with its text (client.errors lets privacy refusals out):
    # Flower's runtime sends it as the error reply, and the server leaves the node out with that reason
    with pytest.raises(PrivacyBudgetExceeded, match="privacy budget exhausted.*lifetime budget"):
        _query(site)
    assert _ledgers(state) == before  # nothing spent
    assert not list((state / "cache").glob("noisy-statistics-*"))  # and nothing drawn


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), 9.0, "1"])
def test_statistics_epsilon_must_fit_the_lifetime_budget(tmp_path, value):
    site = _site(tmp_path, 20, target_epsilon=8.0, statistics_epsilon=value)
    with pytest.raises(ConfigError, match="statistics_epsilon"):
        load_site_config(site)
