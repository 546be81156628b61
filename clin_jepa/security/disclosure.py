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

from clin_jepa.errors import ConfigError

DEFAULT_MIN_PATIENTS = 10
NODE_CONFIG_KEY = "min-patients"
ALWAYS_SENT = ("num-examples",)
ALWAYS_SENT_PREFIXES = ("dp-",)


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
