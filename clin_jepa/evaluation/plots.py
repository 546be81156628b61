"""The report's PNG plots: absolute rollout drift beside the copy baseline, probe AUROC, latent geometry."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first: no display on servers)
import numpy as np  # noqa: E402

from clin_jepa.evaluation.geometry import DETERIORATING, STABLE  # noqa: E402

COHORT_STYLE = ((STABLE, "tab:blue", "stable"), (DETERIORATING, "tab:red", "deteriorating"))
PLOTS = ("drift_curves.png", "probe_auroc.png", "geometry_projection.png")


def _curve(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _auroc(probes: Mapping[str, Any], task: str) -> float | None:
    t = probes["tasks"].get(task)
    return None if t is None or t["skipped"] else t["auroc"]


def _rows(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return ([(k, m["probes"]) for k, m in metrics["models"].items()]
            + [(k, m["probes"]) for k, m in metrics.get("baselines", {}).items()])


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def rollout_verdict(summary: Mapping[str, Any]) -> str:
    """One phrase for a :func:`~clin_jepa.evaluation.drift.drift_summary`: how many hours beat copying, and
    whether it converges (the drift plot's legend and ``clin-jepa evaluate``'s summary line). It lives here,
    not in the torch-importing drift module, so reports and plots load without torch.

    "does not converge" alone reads as a diverging rollout, but a model one hour short of copying and a
    model above it everywhere both earn it; the count tells them apart.
    """
    hours = len(summary["curve"])
    below = summary.get("hours_below_copy")
    tied = summary.get("hours_not_worse_than_copy")
    paired = "" if tied is None or tied == below else f" ({tied} not worse, paired 95 %)"
    counted = "" if below is None else f"below copy at {below}/{hours} hours{paired}, "
    return counted + ("converges" if summary.get("converges") else "does not converge")


def plot_drift(metrics: Mapping[str, Any]) -> bytes:
    """Absolute L1 per horizon hour (solid) and each model's copy-the-last-latent baseline (dotted)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    hours = None
    for i, (label, m) in enumerate(metrics["models"].items()):
        colour = f"C{i % 10}"
        curve = _curve(m["drift"]["curve"])
        hours = np.arange(1, len(curve) + 1)
        ax.plot(hours, curve, color=colour, label=f"{label} ({rollout_verdict(m['drift'])})")
        if m["drift"].get("copy_curve") is not None:
            ax.plot(hours, _curve(m["drift"]["copy_curve"]), color=colour, ls=":", lw=1)
    ax.set_xlabel("horizon hour after the 24 h prediction time")
    ax.set_ylabel("latent L1 vs target encoder (dotted: copy last latent)")
    ax.set_title("Autoregressive rollout drift, absolute")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_auroc(metrics: Mapping[str, Any]) -> bytes:
    tasks = metrics["data"]["tasks"]
    rs = _rows(metrics)
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(tasks)), 4))
    width = 0.8 / max(len(rs), 1)
    x = np.arange(len(tasks))
    for i, (label, probes) in enumerate(rs):
        vals = [_auroc(probes, t) for t in tasks]
        ax.bar(x + i * width, [np.nan if v is None else v for v in vals], width, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("held-out AUROC")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def _cohort_mean_path(proj: np.ndarray, mask: np.ndarray, idx: np.ndarray, context: int,
                      block: int = 6) -> np.ndarray:
    """The cohort's mean projected position per ``block``-hour block, from the last context block on
    (in-stay hours only): hourly positions swing with which concepts were measured, blocks do not."""
    t = proj.shape[1]
    points = []
    for lo in range(context - block, t, block):
        m = mask[idx, lo : lo + block, None]
        if m.sum() == 0:
            break
        points.append((proj[idx, lo : lo + block] * m).sum(axis=(0, 1)) / m.sum())
    return np.array(points).reshape(-1, 2)


def plot_projection(projections: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], context: int,
                    max_stays: int = 200) -> bytes:
    """``projections[label] = (proj (N,T,2), mask (N,T), cohort (N,))``; cohorts are the hidden ones
    with ``--ground-truth``, else "any task positive" vs "all negative".

    Hour-to-hour latents are noisy, so each stay is drawn as one segment from its prediction-time point
    to its last in-stay point (dot), and each cohort's mean path over the horizon as a bold line.
    """
    n = max(len(projections), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, (label, (proj, mask, cohort)) in zip(axes[0], projections.items(), strict=False):
        for kind, colour, name in COHORT_STYLE:
            idx = np.flatnonzero(cohort == kind)
            idx = idx[mask[idx, context:].any(axis=1)][:max_stays]
            if not idx.size:
                continue
            last = np.array([np.flatnonzero(mask[j])[-1] for j in idx])
            start, end = proj[idx, context - 1], proj[idx, last]
            for a, b in zip(start, end, strict=True):
                ax.plot([a[0], b[0]], [a[1], b[1]], color=colour, alpha=0.2, lw=0.7)
            ax.scatter(end[:, 0], end[:, 1], s=7, color=colour, label=f"{name} (n={idx.size})")
            path = _cohort_mean_path(proj, mask, idx, context)
            ax.plot(path[:, 0], path[:, 1], color=colour, lw=2.5)
            if len(path):
                ax.scatter(*path[0], marker="x", s=60, color="black", zorder=3)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7)
    fig.suptitle("Ē latents, PCA 2-D: segment = hour 24 → last in-stay hour (dot); bold = cohort mean "
                 "path in 6-hour blocks from × (hours 19–24)", fontsize=8)
    return _png(fig)
