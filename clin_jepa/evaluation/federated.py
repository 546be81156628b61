"""Evaluation at one site, for a federation: the measures of ``clin-jepa evaluate``, as aggregates only.

A site evaluates the global model on its own stays with :func:`clin_jepa.evaluation.runner.measure` (the
function ``clin-jepa evaluate`` calls for every checkpoint): probes fit on its ``train`` split and scored
on its ``held_out`` split, drift and displacement on ``held_out``. What may leave the site is flattened to
wire metrics by :func:`wire_metrics` under the small-cell rule of :mod:`clin_jepa.security.disclosure`:

* ``eval-auroc-<task>`` / ``eval-auprc-<task>`` — only when at least ``min_patients`` distinct held-out
  patients are positive *and* at least ``min_patients`` are negative for the task;
* ``eval-mean_auroc`` — the mean over the tasks sent (a mean over a suppressed task as well would give it
  away, since the others are sent);
* ``eval-displacement_ratio`` — the mean per-task displacement ratio over the tasks whose two cohorts
  (task positive, every task negative) each hold ``min_patients`` distinct patients;
* ``eval-drift_abs_late`` — rollout L1 drift at 43–48 h, when ``min_patients`` held-out patients reach
  those hours;
* ``num-examples`` — held-out stays, the weight of the server's mean (always sent, as in training).

The server turns replies back into nested per-site metrics with :func:`from_wire` (absent = ``None``,
JSON ``null``) and takes example-weighted means over the sites that sent a value (:func:`aggregate`).
Nothing here imports Flower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.evaluation import geometry
from clin_jepa.evaluation.drift import LATE
from clin_jepa.evaluation.runner import EvalSettings, measure
from clin_jepa.federation import FederationConfig, plan_round

PREFIX = "eval-"
WEIGHT = "num-examples"
SCALARS = ("mean_auroc", "displacement_ratio", "drift_abs_late")
TASK_METRICS = ("auroc", "auprc")


def evaluates_after(rnd: int, cfg: FederationConfig) -> bool:
    """Whether training round ``rnd`` is followed by an evaluation round (run config ``eval-every``)."""
    if cfg.eval_every < 0:
        return False
    if rnd >= cfg.num_rounds or (cfg.stop_after and rnd >= cfg.stop_after):
        return True
    if cfg.eval_every > 0:
        return rnd % cfg.eval_every == 0
    return plan_round(rnd, cfg).phase != plan_round(rnd + 1, cfg).phase


def evaluate_site(model: torch.nn.Module, tensors: SiteTensors, settings: EvalSettings,
                  min_patients: int) -> dict[str, float]:
    """Measure ``model`` on one site's stays (all splits) and return what may leave the site."""
    train, tune, held = (tensors.subset(name) for name in ("train", "tuning", "held_out"))
    if len(train) == 0 or len(held) == 0:  # nothing to fit or to score: only the (zero) weight is sent
        return {WEIGHT: float(len(held))}
    return wire_metrics(measure(model, train, held, settings, tune=tune).metrics, held, settings.context,
                        min_patients)


def _patients(subject_id: np.ndarray, rows: np.ndarray) -> int:
    return len(np.unique(subject_id[rows]))


def wire_metrics(metrics: Mapping[str, Any], held: SiteTensors, context: int,
                 min_patients: int) -> dict[str, float]:
    """The small-cell-safe flat metrics of one site's :func:`measure` result on its ``held`` stays."""
    out: dict[str, float] = {WEIGHT: float(len(held))}
    labels = np.asarray(held.labels, dtype=np.float64)
    stable = geometry.cohorts(labels) == geometry.STABLE
    sent_auroc, ratios = [], []
    for j, task in enumerate(held.tasks):
        pos, neg = labels[:, j] == 1, labels[:, j] == 0
        score = metrics["probes"]["tasks"].get(task) or {}
        if (score.get("skipped") is None and score and _patients(held.subject_id, pos) >= min_patients
                and _patients(held.subject_id, neg) >= min_patients):
            out[f"{PREFIX}auroc-{task}"] = float(score["auroc"])
            out[f"{PREFIX}auprc-{task}"] = float(score["auprc"])
            sent_auroc.append(float(score["auroc"]))
        ratio = metrics["geometry"]["tasks"][task]["ratio"]
        if (np.isfinite(ratio) and _patients(held.subject_id, pos) >= min_patients
                and _patients(held.subject_id, stable) >= min_patients):
            ratios.append(float(ratio))
    if sent_auroc:
        out[f"{PREFIX}mean_auroc"] = float(np.mean(sent_auroc))
    if ratios:
        out[f"{PREFIX}displacement_ratio"] = float(np.mean(ratios))
    late_hours = slice(context + LATE[0] - 1, context + LATE[1])
    late = held.mask[:, late_hours].any(axis=1)
    drift_late = metrics["drift"]["late"]
    if np.isfinite(drift_late) and _patients(held.subject_id, late) >= min_patients:
        out[f"{PREFIX}drift_abs_late"] = float(drift_late)
    return out


def from_wire(record: Mapping[str, float], tasks: Sequence[str]) -> dict[str, Any]:
    """One site's reply as the ``metrics.jsonl`` entry: scalars, per-task AUROC/AUPRC, ``None`` where the
    site suppressed (or could not compute) a value."""
    site: dict[str, Any] = {k: _num(record.get(PREFIX + k)) for k in SCALARS}
    site["tasks"] = {t: {m: _num(record.get(f"{PREFIX}{m}-{t}")) for m in TASK_METRICS} for t in tasks}
    site["n_held_out"] = int(record.get(WEIGHT, 0))
    return site


def _num(value: Any) -> float | None:
    return None if value is None or not np.isfinite(float(value)) else float(value)


def _weighted(pairs: list[tuple[float, float | None]]) -> float | None:
    kept = [(w, v) for w, v in pairs if v is not None and w > 0]
    if not kept:
        return None
    weights = np.array([w for w, _ in kept])
    return float(np.dot(weights, [v for _, v in kept]) / weights.sum())


def aggregate(sites: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Held-out-stay-weighted means over the sites that sent each value (``None`` when none did).

    Flower's own metric aggregation needs every reply to carry the same keys; small-cell suppression
    makes the keys differ by site, hence this mean over the senders of each key.
    """
    n = {name: float(s.get("n_held_out", 0)) for name, s in sites.items()}
    out: dict[str, Any] = {k: _weighted([(n[name], s[k]) for name, s in sites.items()]) for k in SCALARS}
    out["tasks"] = {t: {m: _weighted([(n[name], s["tasks"][t][m]) for name, s in sites.items()])
                        for m in TASK_METRICS} for t in tasks}
    out["n_held_out"] = int(sum(n.values()))
    return out
