"""Writing an evaluation: ``metrics.json`` (machine-readable), ``report.md`` (tables), PNGs, and
``report.html`` (the tables and every plot in one self-contained file).

``metrics`` is the dict built by :mod:`clin_jepa.evaluation.runner`; its layout is documented in
``docs/evaluation.md``. Every file goes through an atomic write, so a reader never sees half a report.
NaN (undefined metric) is written as JSON ``null`` and as "–" in the Markdown tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clin_jepa.evaluation.html import to_html
from clin_jepa.evaluation.paired import group_of, mean_sd, summarize
from clin_jepa.evaluation.plots import PLOTS, plot_auroc, plot_drift, plot_projection
from clin_jepa.io import atomic_write_bytes, atomic_write_text

READABLE = 0o644  # reports are meant to be shared, unlike temp files
__all__ = ["PLOTS", "fmt", "fmt_pm", "markdown", "to_jsonable", "write_report"]


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


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: float | None, pct: bool = False, sign: bool = False) -> str:
    """3 decimals (or a signed percentage); "–" for an undefined value."""
    if not _finite(x):
        return "–"
    if pct:
        return f"{100 * x:+.1f} %"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def fmt_pm(mean: float | None, sd: float | None, sign: bool = False) -> str:
    """``mean ± sd``; the sd is left out when undefined (one seed)."""
    if not _finite(mean):
        return "–"
    return fmt(mean, sign=sign) + (f" ± {sd:.3f}" if _finite(sd) else "")


def _auroc(probes: Mapping[str, Any], task: str) -> float | None:
    t = probes["tasks"].get(task)
    return None if t is None or t["skipped"] else t["auroc"]


def _summary_table(metrics: Mapping[str, Any]) -> list[str]:
    groups = summarize(metrics["models"])
    lines = ["## Across seeds (mean ± sd over seeds)", "",
             "| model | seeds | mean AUROC | bootstrap sd | trained − untrained, per seed (± paired sd) "
             "| displacement per task | hidden cohorts | drift L1 early / late | copy late | untrained late "
             "| converges |", "|---" * 11 + "|"]
    for name, g in groups.items():
        per_seed = ", ".join(f"s{sd_seed}: {fmt(d, sign=True)}" + (f" ± {n:.3f}" if _finite(n) else "")
                             for sd_seed, d, n in g["paired_per_seed"]) or "–"
        cells = [name, ", ".join(str(x) for x in g["seeds"]), fmt_pm(*g["mean_auroc"][:2]),
                 fmt(g["auroc_sd"]), per_seed, fmt_pm(*g["displacement_per_task"][:2]),
                 fmt_pm(*g["displacement_hidden"][:2]),
                 f"{fmt(g['drift_early'][0])} / {fmt_pm(*g['drift_late'][:2])}", fmt(g["copy_late"][0]),
                 fmt(g["untrained_late"][0]), f"{g['converges']}/{len(g['runs'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    base: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for label, b in metrics.get("baselines", {}).items():
        base.setdefault(group_of(label), []).append((label, b["probes"]))
    for name, runs in base.items():
        seeds = ", ".join(label.rsplit("@", 1)[1] for label, _ in runs if "@" in label) or "–"
        auroc = mean_sd([p["mean_auroc"] for _, p in runs])
        sd = mean_sd([p.get("mean_auroc_sd") for _, p in runs])[0]
        lines.append(f"| {name} | {seeds} | {fmt_pm(*auroc[:2])} | {fmt(sd)} |" + " – |" * 7)
    return lines + [""]


def _checkpoint_table(metrics: Mapping[str, Any]) -> list[str]:
    tasks = metrics["data"]["tasks"]
    head = ["model", "mean AUROC (± bootstrap sd)", "trained − untrained (± paired sd)",
            "displacement per task", "hidden cohorts", "any label", "drift L1 1–6 h / 43–48 h",
            "copy baseline 1–6 h / 43–48 h", "hours below copy (not worse, paired 95 %)", "drift change",
            "converges", *tasks]
    lines = ["## Per checkpoint", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, m in metrics["models"].items():
        d, g, p = m["drift"], m["geometry"], m.get("paired")
        diff = "–" if not p else fmt_pm(p["diff"], p.get("diff_sd"), sign=True) + f" (vs {p['untrained']})"
        cells = [label, fmt_pm(m["probes"]["mean_auroc"], m["probes"].get("mean_auroc_sd")), diff,
                 fmt(g.get("displacement_per_task")), fmt((g.get("hidden") or {}).get("ratio")),
                 fmt((g.get("any_label") or {}).get("ratio")), f"{fmt(d['early'])} / {fmt(d['late'])}",
                 f"{fmt(d.get('copy_early'))} / {fmt(d.get('copy_late'))}",
                 f"{d.get('hours_below_copy', '–')}/{len(d['curve'])}"
                 + (f" ({d['hours_not_worse_than_copy']})" if "hours_not_worse_than_copy" in d else ""),
                 fmt(d["relative_change"], pct=True),
                 "yes" if d.get("converges") else "no", *(fmt(_auroc(m["probes"], t)) for t in tasks)]
        lines.append("| " + " | ".join(cells) + " |")
    for label, b in metrics.get("baselines", {}).items():
        cells = [label, fmt_pm(b["probes"]["mean_auroc"], b["probes"].get("mean_auroc_sd")),
                 *["–"] * 9, *(fmt(_auroc(b["probes"], t)) for t in tasks)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _displacement_table(metrics: Mapping[str, Any]) -> list[str]:
    tasks = metrics["data"]["tasks"]
    lines = ["## Displacement ratio per task (task positive ÷ every task negative)", "",
             "| model | " + " | ".join(tasks) + " |", "|---" * (1 + len(tasks)) + "|"]
    for label, m in metrics["models"].items():
        per = m["geometry"].get("tasks", {})
        lines.append(f"| {label} | " + " | ".join(fmt((per.get(t) or {}).get("ratio")) for t in tasks) + " |")
    return lines + [""]


EXPLAIN = [
    "Mean AUROC: linear probe on frozen embeddings, mean over tasks on held-out stays; bootstrap sd = "
    "spread of that mean over resampled held-out stays. Trained − untrained: difference to the untrained "
    "model of the same init seed, with the paired bootstrap sd of the difference (same resamples).",
    "Displacement: how far a stay's latent moves from the prediction time to its last horizon hours; "
    "the ratio divides the mean of a sick group by that of a stable group (per task, hidden cohorts).",
    "Drift L1: absolute latent L1 between the predictor's 48-hour rollout and the target encoder's latents "
    "of the true hours; copy baseline = holding the hour-24 latent constant. Converges = below the copy "
    "baseline at every horizon hour and late (43–48 h) ≤ early (1–6 h).",
]


def markdown(metrics: Mapping[str, Any], plots: Sequence[str] = PLOTS) -> str:
    s = metrics["settings"]
    tasks = metrics["data"]["tasks"]
    lines = ["# Clin-JEPA evaluation", "",
             f"Sites: {', '.join(metrics['data']['sites'])}. Stays: "
             + ", ".join(f"{k} {v}" for k, v in metrics["data"]["n_stays"].items())
             + f". Discretization `{metrics['data']['discretization'][:12]}`.", ""]
    stays = metrics["data"].get("stays", {})
    lines += [f"Stay definition at {site}: {text}." for site, text in stays.items()]
    if "catalog" in metrics["data"]:
        lines += [f"Vocabulary: {metrics['data']['catalog']}.", ""]
    lines += _summary_table(metrics) + _checkpoint_table(metrics) + _displacement_table(metrics)
    lines += [*(f"{e}\n" for e in EXPLAIN),
              f"Probe: {s['embedding']}. AUROC with {s['bootstrap']} bootstrap resamples.", "",
              f"Cohorts: {s['cohorts']}", ""]
    lines += ["## Per-task AUROC with 95 % CI", "", "| model | task | AUROC | CI | AUPRC | n test (pos) |",
              "|---|---|---|---|---|---|"]
    rows = [(k, m["probes"]) for k, m in metrics["models"].items()]
    rows += [(k, m["probes"]) for k, m in metrics.get("baselines", {}).items()]
    for label, probes in rows:
        for t in tasks:
            ts = probes["tasks"].get(t)
            if ts is None or ts["skipped"]:
                continue
            ci = ts["auroc_ci"]
            lines.append(f"| {label} | {t} | {fmt(ts['auroc'])} | {fmt(ci[0])}–{fmt(ci[1])} "
                         f"| {fmt(ts['auprc'])} | {ts['n_test']} ({ts['n_test_pos']}) |")
    notes = list(metrics.get("notes", []))
    for label, probes in rows:
        notes += [f"{label}: task {t} skipped: {ts['skipped']}"
                  for t, ts in probes["tasks"].items() if ts["skipped"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: Mapping[str, Any],
                 projections: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 extra_plots: Mapping[str, bytes] | None = None) -> list[Path]:
    """Write metrics.json, report.md, report.html and the plots into ``out_dir``; returns the paths
    written. ``extra_plots`` (file name -> PNG, e.g. a federated run's round plots) join the HTML."""
    out = Path(out_dir)
    clean = to_jsonable(metrics)
    plots = {PLOTS[0]: plot_drift(clean), PLOTS[1]: plot_auroc(clean),
             PLOTS[2]: plot_projection(projections, metrics["settings"]["context"]), **(extra_plots or {})}
    files = [atomic_write_text(out / "metrics.json", json.dumps(clean, indent=2) + "\n", READABLE)]
    files += [atomic_write_bytes(out / name, png, READABLE) for name, png in plots.items()]
    text = markdown(clean, list(plots))
    files.append(atomic_write_text(out / "report.md", text, READABLE))
    page = to_html(text, plots, "Clin-JEPA evaluation")
    files.append(atomic_write_text(out / "report.html", page, READABLE))
    return files
