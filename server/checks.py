"""Reply screening before aggregation: failed, malformed, non-finite and outlier updates never reach FedAvg.

The screen runs outside ``FedAvg.aggregate_train`` (which stays Flower's own, so Flower's DP wrappers and
their accountant accept the strategy) and hands it only replies that can be averaged: exactly the keys,
shapes and dtypes that were sent, finite values, a positive ``num-examples``, an update norm within
``max-norm-ratio`` x the median of the other replies and, under client-side clipping, within the clipping
norm the site was asked to clip to (an honest site guarantees it exactly: ``encode_reply``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, Message

from clin_jepa.aggregation import norm_outliers
from clin_jepa.federation import update_norm
from clin_jepa.site_policy import REFUSED_CODE
from server.privacy import budget_exhausted

WEIGHT_KEY = "num-examples"


@dataclass
class Screened:
    """Outcome of one round's screen. ``problems`` maps node id -> (status, reason) for every node that
    was asked but contributes nothing: ``error`` (the client raised), ``refused`` (the run asks more than
    the site's limits allow), ``timeout`` (no reply in time), ``rejected`` (reply failed a check)."""

    accepted: list[Message] = field(default_factory=list)
    problems: dict[int, tuple[str, str]] = field(default_factory=dict)
    norms: dict[int, float] = field(default_factory=dict)


def _check_content(msg: Message, sent: Mapping[str, np.ndarray]) -> str | None:
    """Why a reply cannot be averaged, or None if it can."""
    content = msg.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return (f"expected one ArrayRecord and one MetricRecord, got {len(content.array_records)} and "
                f"{len(content.metric_records)}")
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(WEIGHT_KEY)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or weight <= 0:
        return f"metric '{WEIGHT_KEY}' must be a positive number, got {weight!r}"
    arrays: ArrayRecord = next(iter(content.array_records.values()))
    keys, expected = set(arrays.keys()), set(sent)
    if keys != expected:
        return (f"array keys differ from those sent: missing {sorted(expected - keys)[:3]}, "
                f"unexpected {sorted(keys - expected)[:3]}")
    for key in sent:
        arr = arrays[key].numpy()
        if arr.shape != sent[key].shape or arr.dtype != sent[key].dtype:
            return (f"array '{key}' has shape {arr.shape} {arr.dtype}, expected {sent[key].shape} "
                    f"{sent[key].dtype}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return f"array '{key}' contains NaN or inf"
    return None


def screen_replies(replies: Iterable[Message], asked: Iterable[int], sent: Mapping[str, np.ndarray],
                   max_norm_ratio: float, max_update_norm: float | None = None) -> Screened:
    """Split ``replies`` into averageable ones and per-node problems (see :class:`Screened`);
    ``max_update_norm`` rejects any update whose L2 norm exceeds it (client-side DP clipping)."""
    out = Screened()
    answered = set()
    candidates: list[Message] = []
    for msg in replies:
        node = msg.metadata.src_node_id
        answered.add(node)
        if msg.has_error() and msg.error.code == REFUSED_CODE:
            out.problems[node] = ("refused", msg.error.reason.strip())
            continue
        if msg.has_error():
            out.problems[node] = ("error", f"client failed: {msg.error.reason.strip()[-600:]}")
            continue
        exhausted = budget_exhausted(msg)  # a DP site that did not train: a status, not a malformed reply
        if exhausted:
            out.problems[node] = ("budget-exhausted", exhausted)
            continue
        reason = _check_content(msg, sent)
        if reason:
            out.problems[node] = ("rejected", reason)
        else:
            candidates.append(msg)
    for node in asked:
        if node not in answered:
            out.problems[node] = ("timeout", "no reply before round-timeout")
    norms = {msg.metadata.src_node_id: update_norm(
        {k: v.numpy() for k, v in next(iter(msg.content.array_records.values())).items()}, sent)
        for msg in candidates}
    out.norms = norms
    flagged = norm_outliers(norms, max_norm_ratio)
    if max_update_norm is not None:
        for node, norm in norms.items():
            if norm > max_update_norm:
                flagged[node] = (f"update norm {norm:.6g} exceeds the clipping norm {max_update_norm:g} "
                                 "the site was asked to clip to")
    for msg in candidates:
        node = msg.metadata.src_node_id
        if node in flagged:
            out.problems[node] = ("rejected", flagged[node])
        else:
            out.accepted.append(msg)
    return out

