"""Small-cell suppression for what a site reports: no aggregate over fewer than ``min_patients``.

A mean loss or an embedding statistic over three patients says something about those three. A site's
reply therefore keeps its metrics only when they aggregate at least ``min_patients`` distinct patients;
below that only ``num-examples`` and the ``dp-*`` wire keys remain: FedAvg needs the weight, and the
server needs the site's privacy accounting (its ε, budget status, DP weighting), which describes the
site's spend, not its patients. The model update itself is protected by DP when privacy is on, not by
this rule.

The threshold belongs to the hospital: it comes from the SuperNode's node config ``min-patients``
(``deploy/hospital/start-supernode.sh --min-patients N``), default :data:`DEFAULT_MIN_PATIENTS`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from clin_jepa.data.dataset import batch_indices_at
from clin_jepa.errors import ConfigError

DEFAULT_MIN_PATIENTS = 10
NODE_CONFIG_KEY = "min-patients"
ALWAYS_SENT = ("num-examples",)
ALWAYS_SENT_PREFIXES = ("dp-",)
# The server's own schedule echoed back, and the size of the whole train split (checked against the split).
NOT_FROM_PATIENTS = ("lr", "momentum", "phase_index", "train-rows")


def min_patients_from(node_config: Mapping[str, object]) -> int:
    """The node's threshold (node config ``min-patients``), validated; the default when absent."""
    raw = node_config.get(NODE_CONFIG_KEY, DEFAULT_MIN_PATIENTS)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"node config {NODE_CONFIG_KEY}: expected a whole number, got {raw!r}")
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"node config {NODE_CONFIG_KEY}: expected a whole number, got {raw!r}") from None
    if value < 1 or value != float(raw):
        raise ConfigError(f"node config {NODE_CONFIG_KEY}: must be a whole number >= 1, got {raw!r}")
    return value


def suppress_small_aggregates(metrics: Mapping[str, float], n_patients: int,
                              min_patients: int) -> dict[str, float]:
    """``metrics`` unchanged if they aggregate >= ``min_patients`` patients, else only the weight and
    the ``dp-*`` accounting keys."""
    if n_patients >= min_patients:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if k in ALWAYS_SENT or k.startswith(ALWAYS_SENT_PREFIXES)}


def round_patients(subject_id: np.ndarray, batch_size: int, seed: int, step0: int,
                   n_steps: int) -> tuple[int, int]:
    """(distinct patients behind a round's means over all its batches, distinct patients of its last
    batch) for plain (non-DP) training, whose batches are a public function of (seed, step)."""
    n = len(subject_id)
    if n == 0 or n_steps < 1:
        return 0, 0
    batches = [subject_id[batch_indices_at(n, batch_size, seed, s)] for s in range(step0, step0 + n_steps)]
    return len(np.unique(np.concatenate(batches))), len(np.unique(batches[-1]))


def suppress_by_metric(metrics: Mapping[str, float], n_patients: int, round_n: int, last_batch_n: int,
                       min_patients: int) -> dict[str, float]:
    """Each metric kept only when the patients *behind it* reach ``min_patients``: ``monitor-*`` describe
    the last batch, the other aggregates the round's batches, ``train-rows`` the whole train split."""
    out = suppress_small_aggregates(metrics, n_patients, min_patients)
    behind = {k: last_batch_n if k.startswith("monitor-") else round_n for k in out}
    return {k: v for k, v in out.items()
            if k in ALWAYS_SENT or k in NOT_FROM_PATIENTS or k.startswith(ALWAYS_SENT_PREFIXES)
            or behind[k] >= min_patients}
