"""Calibrated noise on the statistics round: the value histograms a site sends under ``privacy.
statistics_epsilon``, released by the Gaussian mechanism and spent in the site's lifetime ledger.

What is released (add/remove one patient neighbours):

* per measurement concept, each patient's values spread over the histogram cells as fractions summing to
  1 (``SiteStatistics.patient_mass``), summed over the patients and pooled into ``BLOCK`` adjacent cells;
  one patient moves each concept's row by at most 1 in L2 (a vector of non-negative parts summing to 1);
* the number of patients (each patient adds 1).

So one patient changes the released vector by at most ``SENSITIVITY = sqrt(M + 1)`` in L2 (M measurement
concepts), and Gaussian noise of standard deviation ``z * SENSITIVITY`` on every entry is the Gaussian
mechanism with noise multiplier ``z``. Per-concept event counts and the number of stays (a patient's
contribution to them is unbounded) are not released: they are sent as 0.

Accounting: one release is one step of Opacus' accountant at sampling rate 1 and noise multiplier ``z``
(for RDP the Gaussian mechanism's α / (2 z²), Mironov 2017, "Rényi Differential Privacy", Prop. 7); ``z``
is the smallest that keeps that step within ``statistics_epsilon`` at the site's ``privacy.delta``
(``opacus.accountants.utils.get_noise_multiplier``). The step is written to a ledger file of the site's
privacy directory (``statistics+<data key>.json``, a name no run id can take) under the ledger lock,
checked against the lifetime budget over every run, BEFORE the noise is drawn; it composes with every
DP-SGD run's history from then on (the ledger's lifetime ε).

A coordinator may ask for the statistics as often as it likes: the noisy release is kept in the site's
cache per data version and settings and sent again (re-sending one release spends nothing); only new data
or new settings draw (and spend) again.

Post-processing, which costs no privacy: a concept whose noisy total is below ``max(min_patients,
ROW_FLOOR * sigma * sqrt(blocks))`` is sent as 0 (a concept the site never measured must not enter the
vocabulary on noise), blocks below ``max(min_patients, FLOOR * sigma)`` are set to 0 (so empty blocks do
not send noise as mass), each block's value is spread evenly over its cells and rounded to integers, and
the patient count is rounded and clipped at 0. The edges the server derives are then patient-weighted
quantiles (each patient's values of a concept weigh 1 in all), not event-weighted ones. The server merges
these like any histograms and sends every site the same edges.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from clin_jepa.config import SiteConfig
from clin_jepa.data.stats import HIST_CELLS, SiteStatistics, statistics_cache_key
from clin_jepa.errors import ClinJepaError, ConfigError
from clin_jepa.io import atomic_write_bytes
from clin_jepa.privacy.ledger import BudgetExhausted, PrivacyLedger, _locked
from clin_jepa.privacy.runs import run_path

BLOCK = 8  # cells pooled per released value: 64 values per concept instead of 512, 1/8 of the noise mass
FLOOR = 2.0  # cells below FLOOR x sigma are sent as 0: noise alone exceeds that in 2.3 % of empty cells
ROW_FLOOR = 4.0  # concepts below ROW_FLOOR x their total noise sd are sent as 0 (noise alone: 3e-5 of rows)
ACCOUNTANT = "rdp"


def sensitivity(n_measurements: int) -> float:
    """L2 distance between the released vectors of two datasets that differ in one patient."""
    return math.sqrt(n_measurements + 1)


def noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest noise multiplier whose one Gaussian release spends at most ``epsilon`` at ``delta``."""
    from opacus.accountants.utils import get_noise_multiplier  # lazily: see clin_jepa.privacy.engine

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0, steps=1,
                                      accountant=ACCOUNTANT))


def release_vector(stats: SiteStatistics) -> np.ndarray:
    """The bounded-contribution vector before noise: (M, HIST_CELLS / BLOCK) pooled patient mass, then the
    patient count, flattened."""
    if stats.patient_mass is None:
        raise ClinJepaError("site statistics: per-patient mass was not computed; cannot release with noise")
    m = stats.patient_mass.shape[0]
    pooled = stats.patient_mass.reshape(m, HIST_CELLS // BLOCK, BLOCK).sum(-1)
    return np.concatenate([pooled.reshape(-1), [float(stats.n_subjects)]])


def gaussian_release(stats: SiteStatistics, z: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The noisy vector and its noise's standard deviation ``z * sensitivity``."""
    vector = release_vector(stats)
    sigma = z * sensitivity(stats.patient_mass.shape[0])  # type: ignore[union-attr]
    return vector + rng.normal(0.0, sigma, vector.shape), sigma


def as_statistics(noisy: np.ndarray, sigma: float, min_patients: int,
                  template: SiteStatistics) -> SiteStatistics:
    """Post-processing of a noisy vector into integer histograms of the wire format."""
    m = template.hist.shape[0]
    pooled = noisy[:-1].reshape(m, HIST_CELLS // BLOCK)
    # a concept whose noisy total is within ROW_FLOOR sd of its noise is dropped whole: otherwise a concept
    # the site never measured would enter the shared vocabulary on a few noise blocks above the floor
    row_sd = sigma * np.sqrt(pooled.shape[1])
    present = pooled.sum(axis=1, keepdims=True) >= max(float(min_patients), ROW_FLOOR * row_sd)
    pooled = np.where(present & (pooled >= max(float(min_patients), FLOOR * sigma)), pooled, 0.0)
    hist = np.rint(np.repeat(pooled / BLOCK, BLOCK, axis=1)).astype(np.int64)
    n_subjects = max(0, int(np.rint(noisy[-1])))
    return SiteStatistics(hist, np.zeros_like(template.counts), n_subjects, 0)


def _ledger(cfg: SiteConfig, data_key: str, epsilon: float) -> PrivacyLedger:
    path = run_path(cfg.state_dir, "privacy", f"statistics+{data_key[:16]}.json")
    p = cfg.privacy
    if path.exists():
        ledger = PrivacyLedger.load(path)
    else:
        ledger = PrivacyLedger(path, cfg.site, path.stem, ACCOUNTANT, p.delta, epsilon, 0.0, 1.0, 1, 0.0)
    # a later release under other settings adds a step at its own noise; what bounds them all is the
    # site's lifetime budget (_check_lifetime), not this file's target
    ledger.target_epsilon, ledger.delta = epsilon, p.delta
    ledger.noise_multiplier = noise_multiplier(epsilon, p.delta)
    ledger.max_grad_norm = 0.0  # no gradients: the release's sensitivity is in the module docstring
    ledger.lifetime_epsilon, ledger.lifetime_delta = p.target_epsilon, p.delta
    return ledger


def released_statistics(cfg: SiteConfig, stats: SiteStatistics, min_patients: int,
                        rng: np.random.Generator | None = None) -> tuple[SiteStatistics, dict[str, float]]:
    """What the statistics round sends under ``privacy.statistics_epsilon``, and its ledger metrics.

    Spends one release in the site's ledger (refusing with :class:`BudgetExhausted` when the lifetime
    budget over all runs cannot cover it) unless this data version was already released under the same
    settings, in which case that release is sent again."""
    epsilon = cfg.privacy.statistics_epsilon
    if epsilon is None:
        raise ConfigError(f"site {cfg.site}: privacy.statistics_epsilon is not set")
    data_key = statistics_cache_key(cfg)
    settings = {"epsilon": epsilon, "delta": cfg.privacy.delta, "block": BLOCK, "data": data_key}
    key = json.dumps(settings, sort_keys=True)
    cache = run_path(cfg.state_dir, "cache", f"noisy-statistics-{data_key[:16]}.npz")
    with _locked(run_path(cfg.state_dir, "privacy")):  # two workers of one site draw (and spend) once
        noisy, sigma = _cached_release(cache, key)
        ledger = _ledger(cfg, data_key, epsilon)
        if noisy is None:
            _check_lifetime(ledger)
            ledger.record(0, 1)  # on disk before the noise is drawn: a crash after this is spent
            noisy, sigma = gaussian_release(stats, ledger.noise_multiplier, rng or np.random.default_rng())
            buf = io.BytesIO()
            np.savez(buf, noisy=noisy, sigma=np.array(sigma), key=np.array(key))
            atomic_write_bytes(cache, buf.getvalue())
    metrics = {"statistics-epsilon": ledger.epsilon(), "statistics-noise-sd": sigma,
               "dp-epsilon-all-runs": ledger.lifetime_epsilon_spent(),
               "dp-lifetime-epsilon": ledger.lifetime_epsilon}
    return as_statistics(noisy, sigma, min_patients, stats), metrics


def _check_lifetime(ledger: PrivacyLedger) -> None:
    """Refuse a release that would take the site's ε over every run above its lifetime budget."""
    after, spent = ledger.lifetime_epsilon_spent(1), ledger.lifetime_epsilon_spent()
    if after > ledger.lifetime_epsilon:
        raise BudgetExhausted(
            f"site {ledger.site}: privacy budget exhausted: releasing the statistics with noise for "
            f"privacy.statistics_epsilon = {ledger.target_epsilon:g} would spend ε={after:.3f} over all runs "
            f"> the site's lifetime budget privacy.target_epsilon = {ledger.lifetime_epsilon:g} at "
            f"δ={ledger.delta:g} (spent so far ε={spent:.3f}); the site sends no statistics",
            {"dp-epsilon-all-runs": spent, "dp-lifetime-epsilon": ledger.lifetime_epsilon,
             "dp-budget-exhausted": 1})


def _cached_release(path: Path, key: str) -> tuple[np.ndarray | None, float]:
    """The release kept for exactly these settings and data, or (None, 0) (a missing, unreadable or
    foreign file means a new release, which is spent again: never a refund)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return np.asarray(z["noisy"], np.float64), float(z["sigma"])
    except (OSError, ValueError, KeyError, EOFError):
        pass
    return None, 0.0


__all__ = ["BLOCK", "FLOOR", "BudgetExhausted", "gaussian_release", "noise_multiplier", "release_vector",
           "released_statistics", "sensitivity"]
