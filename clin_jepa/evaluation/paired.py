"""Seeds and pairs: which untrained model is each trained run's control, and how noisy is the difference.

An untrained model's probe AUROC swings by about ±0.03 with its init seed, so a trained run is compared
with the untrained model of its *own* seed (same architecture, same initial weights: ``clin-jepa train
--steps 0 --seed S``), never with another seed's or the best one. Several seeds of one model share a
display name up to ``@``: ``curriculum@0``, ``curriculum@1`` group as ``curriculum``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clin_jepa.evaluation.probes import ProbeResult, bootstrap_mean_auroc

SEED_SEP = "@"


def group_of(label: str) -> str:
    """``curriculum@2`` -> ``curriculum``; a label without a seed suffix is its own group."""
    return label.rsplit(SEED_SEP, 1)[0]


def is_untrained(info: Mapping[str, Any]) -> bool:
    return info.get("step") == 0 and not info.get("round")


def find_pairs(models: Sequence[Any]) -> dict[str, str]:
    """Trained label -> label of the untrained model with the same seed and model config.

    ``models`` are :class:`~clin_jepa.evaluation.loading.LoadedModel`; a trained model without such a
    control in the same evaluation has no pair.
    """
    controls = [m for m in models if is_untrained(m.info)]
    pairs = {}
    for m in models:
        if is_untrained(m.info) or m.info.get("seed") is None:
            continue
        match = next((c for c in controls if c.info.get("seed") == m.info["seed"]
                      and c.model.cfg == m.model.cfg), None)
        if match is not None:
            pairs[m.label] = match.label
    return pairs


def probe_noise(y_test: np.ndarray, probes: Mapping[str, ProbeResult], pairs: Mapping[str, str],
                n_boot: int, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """(bootstrap sd of each model's mean AUROC, paired bootstrap sd of each trained − control difference).

    All models are resampled together, so the paired sd reflects that both were scored on the same stays.
    """
    scores = {k: p.scores for k, p in probes.items() if p.scores is not None}
    reps = bootstrap_mean_auroc(y_test, scores, n_boot, seed)
    sd = {k: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for k, v in reps.items()}
    diff = {k: float(np.std(reps[k] - reps[c], ddof=1)) if len(reps.get(k, ())) > 1 else float("nan")
            for k, c in pairs.items() if k in reps and c in reps}
    return sd, diff


def mean_sd(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and sample sd of the finite values (sd NaN for fewer than two), and how many there were."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def summarize(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model group (seeds pooled): mean ± sd of the figures the report shows, and the per-seed paired
    differences with their bootstrap noise. ``models`` is ``metrics["models"]`` (JSON-level dicts)."""
    groups: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for label, m in models.items():
        groups.setdefault(group_of(label), []).append((label, m))
    out = {}
    for name, runs in groups.items():
        ms = [m for _, m in runs]
        paired = [m.get("paired") for m in ms if m.get("paired")]
        out[name] = {
            "runs": [label for label, _ in runs],
            "seeds": [m.get("seed") for m in ms],
            "mean_auroc": mean_sd([m["probes"]["mean_auroc"] for m in ms]),
            "auroc_sd": mean_sd([m["probes"].get("mean_auroc_sd") for m in ms])[0],
            "paired_diff": mean_sd([p["diff"] for p in paired]),
            "paired_per_seed": [(p.get("seed"), p["diff"], p.get("diff_sd")) for p in paired],
            "displacement_per_task": mean_sd([m["geometry"]["displacement_per_task"] for m in ms]),
            "displacement_hidden": mean_sd([(m["geometry"].get("hidden") or {}).get("ratio") for m in ms]),
            "drift_early": mean_sd([m["drift"]["early"] for m in ms]),
            "drift_late": mean_sd([m["drift"]["late"] for m in ms]),
            "copy_late": mean_sd([m["drift"].get("copy_late") for m in ms]),
            "untrained_late": mean_sd([p.get("untrained_late") for p in paired]),
            "converges": sum(bool(m["drift"].get("converges")) for m in ms),
        }
    return out
