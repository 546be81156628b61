"""The federated run's own report, from its ``metrics.jsonl``: what happened round by round.

Three plots — training loss per site per round, evaluation AUROC over rounds (per site and the
held-out-weighted mean), cumulative sample-level ε per site over rounds (and the client-level ε when
central DP is on) — a rounds table and the last evaluation round per site, written as ``report.md``
and the self-contained ``report.html`` beside the run's checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clin_jepa.evaluation.html import to_html
from clin_jepa.evaluation.plots import _png, plt
from clin_jepa.evaluation.report import READABLE, fmt
from clin_jepa.io import atomic_write_bytes, atomic_write_text

ROUND_PLOTS = ("rounds_loss.png", "rounds_eval_auroc.png", "rounds_epsilon.png")
EVALUATE = "evaluate"
EPSILON = "dp-epsilon"


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The metrics lines of a run (a missing file is an empty run). A line that is not a JSON object (a
    torn last line after a crash, a foreign file) is left out: the report is a view, not the record."""
    if not path.is_file():
        return []
    out = []
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict):
            out.append(line)
    return out


def _training(lines: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [ln for ln in lines if ln.get("round", 0) >= 1 and ln.get("phase") != EVALUATE]


def _evaluations(lines: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [ln for ln in lines if ln.get("phase") == EVALUATE]


def _series(lines: Sequence[Mapping[str, Any]], get: Any) -> dict[str, tuple[list[int], list[float]]]:
    """site -> (rounds, values) of ``get(site_entry)`` where it is a number."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for ln in lines:
        for site, entry in sorted(ln.get("sites", {}).items()):
            value = get(entry)
            if isinstance(value, int | float) and np.isfinite(value):
                xs, ys = out.setdefault(site, ([], []))
                xs.append(int(ln["round"]))
                ys.append(float(value))
    return out


def _plot(title: str, ylabel: str, series: Mapping[str, tuple[list[int], list[float]]],
          empty: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (name, (xs, ys)) in enumerate(series.items()):
        style = {"color": "black", "lw": 2.2} if name == "mean" else {"color": f"C{i % 10}"}
        ax.plot(xs, ys, marker="o", ms=3, label=name, **style)
    if not series:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="0.4")
    else:
        ax.legend(fontsize=8)
    ax.set(title=title, xlabel="round", ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _png(fig)


def round_plots(lines: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    """The three round plots as PNG bytes, keyed by file name."""
    train, evals = _training(lines), _evaluations(lines)
    auroc = _series(evals, lambda e: e.get("mean_auroc"))
    mean = [(int(ln["round"]), ln["aggregate"].get("mean_auroc")) for ln in evals]
    mean = [(r, v) for r, v in mean if v is not None]
    if mean:
        auroc["mean"] = ([r for r, _ in mean], [v for _, v in mean])
    eps = _series(train, lambda e: e.get(EPSILON))
    client = [(int(ln["round"]), ((ln.get("privacy") or {}).get("client-level") or {}).get("epsilon"))
              for ln in train]
    client = [(r, v) for r, v in client if v is not None]
    if client:
        eps["client-level (all sites)"] = ([r for r, _ in client], [v for _, v in client])
    return {
        ROUND_PLOTS[0]: _plot("Training loss per site", "mean local loss",
                              _series(train, lambda e: e.get("loss")),
                              "no site reported a loss (suppressed, or DP-SGD)"),
        ROUND_PLOTS[1]: _plot("Federated evaluation: mean probe AUROC", "AUROC (held-out)", auroc,
                              "no evaluation round (eval-every = -1) or every value suppressed"),
        ROUND_PLOTS[2]: _plot("Privacy spent (cumulative ε)", "ε", eps,
                              "no differential privacy in this run"),
    }


def markdown(lines: Sequence[Mapping[str, Any]]) -> str:
    train, evals = _training(lines), _evaluations(lines)
    auroc_at = {int(ln["round"]): ln["aggregate"].get("mean_auroc") for ln in evals}
    out = ["# Clin-JEPA federated run", "",
           f"{len(train)} training round(s), {len(evals)} evaluation round(s).", "",
           "## Rounds", "",
           "| round | phase | loss | sites accepted | eval AUROC (weighted mean) | time (s) |",
           "|---|---|---|---|---|---|"]
    for ln in train:
        r = int(ln["round"])
        out.append(f"| {r} | {ln['phase']} | {fmt((ln.get('aggregate') or {}).get('loss'))} "
                   f"| {ln.get('accepted', '–')}/{len(ln.get('sites', {}))} | {fmt(auroc_at.get(r))} "
                   f"| {ln.get('round_time_s', float('nan')):.1f} |")
    if evals:
        last = evals[-1]
        tasks = list(last["aggregate"]["tasks"])
        out += ["", f"## Last evaluation (after round {last['round']}), at each site on its own stays", "",
                "Probes fit on the site's train split, scored on its held-out split; `–` = suppressed "
                "(fewer than the site's min-patients positives or negatives) or not computable.", "",
                "| site | held-out stays | mean AUROC | displacement ratio | drift L1 43–48 h | "
                + " | ".join(tasks) + " |", "|---" * (5 + len(tasks)) + "|"]
        rows = [*sorted(last["sites"].items()), ("weighted mean", last["aggregate"])]
        for name, s in rows:
            out.append(f"| {name} | {s.get('n_held_out', '–')} | {fmt(s['mean_auroc'])} "
                       f"| {fmt(s['displacement_ratio'])} | {fmt(s['drift_abs_late'])} | "
                       + " | ".join(fmt(s["tasks"][t]["auroc"]) for t in tasks) + " |")
        out += [f"- {name}: {why}" for name, why in last.get("failed", {}).items()]
    out += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in ROUND_PLOTS), ""]
    return "\n".join(out)


def write_rounds_report(out_dir: str | Path, lines: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``report.md``, ``report.html`` and the round plots of a federated run into ``out_dir``."""
    out = Path(out_dir)
    plots = round_plots(lines)
    text = markdown(lines)
    files = [atomic_write_bytes(out / name, png, READABLE) for name, png in plots.items()]
    files.append(atomic_write_text(out / "report.md", text, READABLE))
    files.append(atomic_write_text(out / "report.html", to_html(text, plots, "Clin-JEPA federated run"),
                                   READABLE))
    return files
