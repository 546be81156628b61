"""The weight each accepted reply carries into aggregation, set by the server.

A reply's own ``num-examples`` (or ``dp-uniform-weight``) is the site's claim; Flower's strategies weigh
by whatever that metric says. Before aggregation the server overwrites it in every accepted reply with a
weight it can stand behind (``clin_jepa.aggregation.site_weights``: the statistics round's patient counts,
capped; 1 for every site under client-level DP, which Flower's accountant needs uniform) and logs what
the site claimed beside what it got.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message

from clin_jepa.aggregation import site_weights
from clin_jepa.privacy.wire import UNIFORM_WEIGHT


def apply_server_weights(accepted: Iterable[Message], weight_key: str, site_nodes: Mapping[int, str],
                         site_patients: Mapping[str, int], cap: float) -> dict[int, dict[str, Any]]:
    """Set ``weight_key`` in each accepted reply's MetricRecord; returns node -> {claimed, weight}."""
    weights = site_weights(site_patients, cap)
    # a site the table does not know (a checkpoint from before the table existed) weighs as a median site
    fallback = sorted(weights.values())[(len(weights) - 1) // 2] if weights else 1.0
    out: dict[int, dict[str, Any]] = {}
    for msg in accepted:
        node = msg.metadata.src_node_id
        record = next(iter(msg.content.metric_records.values()))
        claimed = record.get(weight_key)
        weight = 1.0 if weight_key == UNIFORM_WEIGHT else weights.get(site_nodes.get(node, ""), fallback)
        record[weight_key] = float(weight)
        out[node] = {"claimed_weight": claimed, "weight": float(weight)}
    return out
