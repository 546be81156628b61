"""How the server combines the sites' replies: which aggregator, how many replies it needs, what weighs.

Pure functions (no Flower): the ServerApp maps ``AGGREGATORS`` onto Flower's own strategies
(``server.strategy``) and asks here whether a run's choice is sound before any round starts.

Weights. A reply's ``num-examples`` is whatever the site writes into it: one site claiming 1e12 examples
would own a weighted average. The server therefore never weighs by it. Each site weighs by the patient
count it committed to in the statistics round (before any model existed), capped at ``weight-cap`` x the
lower median of all sites' counts, so a liar's share is bounded by the honest sites' sizes; under
client-level DP every site weighs the same (Flower's accountant requires it).

Robust aggregators tolerate ``aggregation-malicious`` = f hostile replies among those a round accepts
only when enough honest ones are left; a round never updates with fewer than ``min-sites`` accepted
replies, so ``min-sites`` must be at least the aggregator's requirement (:func:`required_replies`).

Around the aggregate: :func:`norm_outliers` screens replies before it, :func:`server_step` moves the
model by it, :func:`ema_update` moves the target encoder towards the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from clin_jepa.errors import ConfigError

# run-config name -> the Flower strategy the ServerApp builds (flwr.serverapp.strategy)
AGGREGATORS = {"fedavg": "FedAvg", "median": "FedMedian", "trimmed-mean": "FedTrimmedAvg",
               "krum": "Krum", "multi-krum": "MultiKrum", "bulyan": "Bulyan"}
ROBUST = tuple(a for a in AGGREGATORS if a != "fedavg")


def required_replies(aggregation: str, malicious: int, beta: float) -> int:
    """The fewest replies with which ``aggregation`` still outvotes ``malicious`` hostile ones (1 for
    FedAvg, which outvotes none). Trimmed mean cuts ``int(beta x n)`` replies per side, so it needs
    ``n`` with ``int(beta x n) >= malicious`` and an untrimmed middle left."""
    if aggregation == "fedavg":
        return 1
    if aggregation == "median":  # an honest majority: the median lies between two honest values
        return 2 * malicious + 1
    if aggregation == "trimmed-mean":
        if beta <= 0:
            return 10**9
        n = 2 * malicious + 1
        while int(beta * n) < malicious:
            n += 1
        return n
    if aggregation in ("krum", "multi-krum"):  # Blanchard et al. 2017: n > 2f + 2
        return 2 * malicious + 3
    if aggregation == "bulyan":  # El Mhamdi et al. 2018: n >= 4f + 3
        return 4 * malicious + 3
    raise ConfigError(f"run config aggregation: {aggregation!r} is not one of {list(AGGREGATORS)}")


def check_aggregation(aggregation: str, malicious: int, beta: float, min_sites: int, dp_central: str,
                      weight_cap: float) -> None:
    """Refuse a run whose aggregation cannot keep its promise (one paragraph, no Flower involved)."""
    if aggregation not in AGGREGATORS:
        raise ConfigError(f"run config aggregation: {aggregation!r} is not one of {list(AGGREGATORS)}")
    if not weight_cap >= 1 or not np.isfinite(weight_cap):
        raise ConfigError(f"run config weight-cap: must be a finite number >= 1, got {weight_cap}")
    if aggregation == "fedavg":
        return
    if malicious < 1:
        raise ConfigError(f"run config aggregation-malicious: a robust aggregation ({aggregation}) must "
                          f"tolerate at least 1 hostile site, got {malicious}")
    if not 0 < beta < 0.5:
        raise ConfigError(f"run config aggregation-beta: the trimmed share per side must be in (0, 0.5), "
                          f"got {beta}")
    if dp_central != "off":
        # Flower's central DP noise is sigma x C / n: the sensitivity of a plain mean of clipped updates. A
        # median, trimmed mean or Krum selection can move by up to C when one site changes, so the
        # accountant's epsilon would be false.
        raise ConfigError(f"run config aggregation = {aggregation} cannot be combined with dp-central = "
                          f"{dp_central}: Flower's client-level DP noise is calibrated to a plain average "
                          "(sensitivity C/n); use aggregation = fedavg with central DP, or sample-level DP "
                          "(dp-sample-*) with a robust aggregation")
    need = required_replies(aggregation, malicious, beta)
    if min_sites < need:
        raise ConfigError(f"run config aggregation = {aggregation} with aggregation-malicious = {malicious}"
                          + (f" and aggregation-beta = {beta}" if aggregation == "trimmed-mean" else "")
                          + f" needs at least {need} accepted replies per round, but min-sites is "
                          f"{min_sites}: a round with fewer replies would be averaged without protection. "
                          f"Raise min-sites to {need} (and run that many sites) or tolerate fewer hostile "
                          "sites")


def site_weights(patients: Mapping[str, int], cap: float) -> dict[str, float]:
    """Aggregation weight per site from its statistics-round patient count: at least 1, at most ``cap`` x
    the lower median of all counts (the lower median is an honest site's count as long as hostile sites
    are fewer than half, also with two sites)."""
    if not patients:
        return {}
    counts = np.sort(np.array([max(int(v), 1) for v in patients.values()], dtype=np.float64))
    ceiling = cap * float(counts[(len(counts) - 1) // 2])
    return {site: float(min(max(int(n), 1), ceiling)) for site, n in patients.items()}


def server_step(current: Mapping[str, np.ndarray], averaged: Mapping[str, np.ndarray],
                velocity: dict[str, np.ndarray], lr: float, momentum: float) -> dict[str, np.ndarray]:
    """The server's optimizer on one round's average (FedAvgM, Hsu et al. 2019): the pseudo-gradient
    ``averaged - current`` feeds a heavy-ball velocity ``v <- momentum * v + delta`` (updated in place,
    keyed like the arrays) and the new weights are ``current + lr * v``. ``lr = 1, momentum = 0`` is
    plain FedAvg, exactly.

    It runs on the output of the aggregation (and of central DP's noise), never inside it: Flower's
    ``FedAvgM`` inside a DP wrapper would scale the clipped mean by ``lr`` before the noise is added, so
    one site could move the release ``lr`` times further than the noise was calibrated for. Applied after
    the release it is post-processing, which no DP guarantee forbids; keys absent from ``averaged`` (a
    group the phase does not train) lose their velocity.
    """
    for key in set(velocity) - set(averaged):
        del velocity[key]
    out = {}
    for key, avg in averaged.items():
        old = current[key]
        delta = np.asarray(avg, dtype=np.float64) - old
        v = delta if key not in velocity else momentum * velocity[key] + delta
        if momentum > 0:
            velocity[key] = v
        out[key] = (old + lr * v).astype(old.dtype)
    return out


def ema_update(target: Mapping[str, np.ndarray], online: Mapping[str, np.ndarray],
               momentum: float) -> dict[str, np.ndarray]:
    """``m * target + (1 - m) * online`` per tensor; ``m = 0`` copies ``online``, ``m = 1`` keeps ``target``.

    Integer buffers (if any) are copied from ``online``: they are counters, not weights.
    """
    if set(target) != set(online):
        raise ConfigError(f"EMA: target and online tensors differ in names: "
                          f"{sorted(set(target) ^ set(online))[:5]}")
    out = {}
    for k, t in target.items():
        o = np.asarray(online[k])
        if momentum == 0.0 or not np.issubdtype(o.dtype, np.floating):
            out[k] = o.copy()
        elif momentum == 1.0:
            out[k] = np.asarray(t).copy()
        else:
            out[k] = (momentum * np.asarray(t, dtype=np.float64)
                      + (1.0 - momentum) * o.astype(np.float64)).astype(o.dtype)
    return out


def norm_outliers(norms: Mapping[Any, float], ratio: float) -> dict[Any, str]:
    """Replies whose update norm exceeds ``ratio`` × the median of the *other* replies' norms.

    Comparing against the others (not a median that includes the candidate) flags one absurd update among
    three or more. Two replies have no majority: a hostile site sending a zero update would make the honest
    one look ``ratio`` times too large. When two disagree by more than ``ratio`` both are flagged (the round
    learns nothing rather than the wrong thing). With a single reply nothing can be compared.
    """
    flagged = {}
    for key, norm in norms.items():
        others = [n for k, n in norms.items() if k != key]
        if not others:
            continue
        ref = float(np.median(others))
        if norm > ratio * max(ref, 1e-12):
            flagged[key] = f"update norm {norm:.4g} > {ratio:g} x median of the others ({ref:.4g})"
    if len(norms) == 2 and flagged:
        (a, na), (b, nb) = norms.items()
        why = (f"the two update norms ({na:.4g}, {nb:.4g}) differ by more than {ratio:g}x and two replies "
               "have no majority to tell the outlier: both left out")
        flagged = {a: why, b: why}
    return flagged
