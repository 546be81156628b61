"""Writing an evaluation: ``metrics.json`` (machine-readable), ``report.md`` (side-by-side table) and PNGs.

``metrics`` is the dict built by :mod:`clin_jepa.evaluation.runner`; its layout is documented in
``docs/evaluation.md``. Every file goes through an atomic write, so a reader never sees half a report.
NaN (undefined metric) is written as JSON ``null`` and as "–" in the Markdown table.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first: no display on servers)
import numpy as np  # noqa: E402

from clin_jepa.evaluation.geometry import DETERIORATING, STABLE  # noqa: E402
from clin_jepa.io import atomic_write_bytes, atomic_write_text  # noqa: E402

COHORT_STYLE = ((STABLE, "tab:blue", "stable"), (DETERIORATING, "tab:red", "deteriorating"))
READABLE = 0o644  # reports are meant to be shared, unlike temp files
PLOTS = ("drift_curves.png", "probe_auroc.png", "geometry_projection.png")


def to_jsonable(obj: Any) -> Any:
    """Nested dicts/lists/tuples/numpy scalars -> JSON types; NaN and inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:+.1f} %" if pct else f"{x:.3f}"


def rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per checkpoint and baseline: label, drift change, displacement ratio, mean AUROC, per task."""
    out = []
    for label, m in metrics["models"].items():
        out.append({"label": label, "kind": "checkpoint", "drift_change": m["drift"]["relative_change"],
                    "drift_levels": (m["drift"].get("early"), m["drift"].get("late")),
                    "displacement_ratio": m["geometry"]["ratio"], "probes": m["probes"]})
    for label, m in metrics.get("baselines", {}).items():
        out.append({"label": label, "kind": "baseline", "drift_change": None, "drift_levels": (None, None),
                    "displacement_ratio": None,
                    "probes": m["probes"]})
    return out


def _auroc(probes: Mapping[str, Any], task: str) -> float | None:
    t = probes["tasks"].get(task)
    return None if t is None or t["skipped"] else t["auroc"]


def markdown(metrics: Mapping[str, Any]) -> str:
    tasks = metrics["data"]["tasks"]
    s = metrics["settings"]
    lines = [
        "# Clin-JEPA evaluation",
        "",
        f"Sites: {', '.join(metrics['data']['sites'])}. Stays: "
        + ", ".join(f"{k} {v}" for k, v in metrics["data"]["n_stays"].items())
        + f". Discretization `{metrics['data']['discretization'][:12]}`.",
        "",
        "| model | drift change 1–6 h → 43–48 h | drift L1 1–6 h / 43–48 h | displacement ratio "
        "(det./stable) | mean AUROC | " + " | ".join(tasks) + " |",
        "|---" * (5 + len(tasks)) + "|",
    ]
    for r in rows(metrics):
        per_task = [_fmt(_auroc(r["probes"], t)) for t in tasks]
        early, late = r["drift_levels"]
        levels = "–" if early is None else f"{_fmt(early)} / {_fmt(late)}"
        head = [r["label"], _fmt(r["drift_change"], pct=True), levels, _fmt(r["displacement_ratio"]),
                _fmt(r["probes"]["mean_auroc"])]
        lines.append("| " + " | ".join(head + per_task) + " |")
    lines += ["", "Drift change: relative change of the latent L1 between the predictor's 48-hour "
              "autoregressive rollout from hour 24 and the target encoder's latents of the true hours, "
              "from the mean of horizon hours 1–6 to that of 43–48 (negative = the rollout converges).",
              "",
              f"Probe: {s['embedding']}. AUROC with {s['bootstrap']} bootstrap resamples "
              "(95 % percentile interval) in `metrics.json`.", "",
              f"Cohorts: {s['cohorts']}", ""]
    lines += ["## Per-task AUROC with 95 % CI", "", "| model | task | AUROC | CI | AUPRC | n test (pos) |",
              "|---|---|---|---|---|---|"]
    for r in rows(metrics):
        for t in tasks:
            ts = r["probes"]["tasks"].get(t)
            if ts is None or ts["skipped"]:
                continue
            ci = ts["auroc_ci"]
            lines.append(f"| {r['label']} | {t} | {_fmt(ts['auroc'])} | {_fmt(ci[0])}–{_fmt(ci[1])} "
                         f"| {_fmt(ts['auprc'])} | {ts['n_test']} ({ts['n_test_pos']}) |")
    notes = list(metrics.get("notes", []))
    for r in rows(metrics):
        notes += [f"{r['label']}: task {t} skipped: {ts['skipped']}"
                  for t, ts in r["probes"]["tasks"].items() if ts["skipped"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in PLOTS), ""]
    return "\n".join(lines)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_drift(metrics: Mapping[str, Any]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, m in metrics["models"].items():
        curve = np.array([np.nan if v is None else v for v in m["drift"]["curve"]], dtype=float)
        change = _fmt(m["drift"]["relative_change"], pct=True)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=f"{label} ({change})")
    ax.set_xlabel("horizon hour after the 24 h prediction time")
    ax.set_ylabel("latent L1 (rollout vs target encoder)")
    ax.set_title("Autoregressive rollout drift")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_auroc(metrics: Mapping[str, Any]) -> bytes:
    tasks = metrics["data"]["tasks"]
    rs = rows(metrics)
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(tasks)), 4))
    width = 0.8 / max(len(rs), 1)
    x = np.arange(len(tasks))
    for i, r in enumerate(rs):
        vals = [_auroc(r["probes"], t) for t in tasks]
        ax.bar(x + i * width, [np.nan if v is None else v for v in vals], width, label=r["label"])
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
    """``projections[label] = (proj (N,T,2), mask (N,T), cohort (N,))``.

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


def write_report(out_dir: str | Path, metrics: Mapping[str, Any],
                 projections: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[Path]:
    """Write metrics.json, report.md and the plots into ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    clean = to_jsonable(metrics)
    files = [
        atomic_write_text(out / "metrics.json", json.dumps(clean, indent=2) + "\n", READABLE),
        atomic_write_bytes(out / PLOTS[0], plot_drift(clean), READABLE),
        atomic_write_bytes(out / PLOTS[1], plot_auroc(clean), READABLE),
        atomic_write_bytes(out / PLOTS[2], plot_projection(projections, metrics["settings"]["context"]),
                           READABLE),
    ]
    files.append(atomic_write_text(out / "report.md", markdown(clean), READABLE))
    return files
