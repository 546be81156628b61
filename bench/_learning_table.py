"""learning.json rows, the criteria of the issue "A backbone that learns", and the printed table.

Pure functions of the merged evaluation metrics (no training, no I/O), so a unit test can judge hand-made
numbers. A criterion whose models were not run has ``value`` None and ``pass`` None ("not run").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clin_jepa.evaluation.paired import group_of, mean_sd
from clin_jepa.evaluation.report import fmt, fmt_pm

HORIZON = 48
CURRICULUM = "curriculum"


def _ok(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _seed(label: str, m: Mapping[str, Any]) -> int | None:
    if m.get("seed") is not None:
        return int(m["seed"])
    tail = label.rsplit("@", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else None


def runs_of(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One learning.json row per evaluated checkpoint (``metrics["models"]`` of the merged reports)."""
    out = []
    for label, m in models.items():
        d, g, p = m["drift"], m["geometry"], m.get("paired") or {}
        out.append({"model": group_of(label), "seed": _seed(label, m), "label": label,
                    "mean_auroc": m["probes"]["mean_auroc"],
                    "mean_auroc_sd": m["probes"].get("mean_auroc_sd"),
                    "paired_diff": p.get("diff"), "paired_sd": p.get("diff_sd"),
                    "displacement_per_task": g.get("displacement_per_task"),
                    "displacement_hidden": (g.get("hidden") or {}).get("ratio"),
                    "drift_abs": d["curve"], "copy_baseline": d.get("copy_curve"),
                    "drift_early": d["early"], "drift_late": d["late"], "converges": d.get("converges"),
                    "hours_below_copy": d.get("hours_below_copy"),
                    "hours_not_worse_than_copy": d.get("hours_not_worse_than_copy"),
                    "checkpoint": m.get("checkpoint")})
    # reports split by seed merge in their own order; rows (and the table's per-seed lists) go by seed
    return sorted(out, key=lambda r: (r["seed"] is None, r["seed"] or 0))


def baselines_of(baselines: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, dict]:
    """``{"last_value_lr": {seed: auroc}, "gru": {seed: auroc}}``. The LR is deterministic, so every seed
    carries the same value; the GRU of seed S is ``gru@S`` (its init seed)."""
    out: dict[str, dict] = {"last_value_lr": {}, "gru": {}}
    for s in seeds:
        lr = baselines.get("last_value_lr")
        gru = baselines.get(f"gru@{s}") or (baselines.get("gru") if len(seeds) == 1 else None)
        out["last_value_lr"][str(s)] = lr["probes"]["mean_auroc"] if lr else None
        out["gru"][str(s)] = gru["probes"]["mean_auroc"] if gru else None
    return out


def _values(runs: list[dict], model: str, key: str) -> list[float]:
    return [r[key] for r in runs if r["model"] == model and _ok(r.get(key))]


def _mean(runs: list[dict], model: str, key: str) -> float | None:
    v = _values(runs, model, key)
    return float(np.mean(v)) if v else None


def _seeds(runs: list[dict], model: str) -> set[int]:
    return {r["seed"] for r in runs if r["model"] == model and _ok(r.get("mean_auroc"))}


def _mean_on(runs: list[dict], model: str, seeds: set[int]) -> float | None:
    return _mean([r for r in runs if r["seed"] in seeds], model, "mean_auroc")


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _crit(value: float | None, threshold: float | None, op: str) -> dict[str, Any]:
    """``op`` is ">=", "<=", ">" or "reported" (passes when a value exists)."""
    if value is None:
        return {"value": None, "threshold": threshold, "op": op, "pass": None}
    checks = {">=": lambda: value >= threshold, "<=": lambda: value <= threshold,
              ">": lambda: value > threshold, "reported": lambda: True}
    return {"value": value, "threshold": threshold, "op": op, "pass": bool(checks[op]())}


def criteria(runs: list[dict], baselines: Mapping[str, Mapping[str, Any]],
             task_max: float | None = None) -> dict[str, dict[str, Any]]:
    """Every "Done when" criterion of issue 12, plus issue 11's GRU-vs-last-value data check.
    ``task_max`` is the highest single-task AUROC of the two baselines."""
    cur = CURRICULUM
    lr = [v for v in baselines.get("last_value_lr", {}).values() if _ok(v)]
    gru = [v for v in baselines.get("gru", {}).values() if _ok(v)]
    lr_m = float(np.mean(lr)) if lr else None
    gru_m = float(np.mean(gru)) if gru else None
    auroc = _mean(runs, cur, "mean_auroc")
    fed = _mean(runs, "federated", "mean_auroc")
    paired = _values(runs, cur, "paired_diff")
    below = _values(runs, cur, "hours_below_copy")
    c = {
        "curriculum_minus_untrained_every_seed": _crit(min(paired) if paired else None, 0.03, ">="),
        "curriculum_vs_last_value_lr": _crit(_diff(auroc, lr_m), 0.0, ">="),
        "curriculum_vs_gru": _crit(_diff(auroc, gru_m), 0.0, ">="),
        # on the seeds that have a federated run (--federated-seeds may run fewer), seed for seed
        "federated_vs_centralized": _crit(_diff(fed, _mean_on(runs, cur, _seeds(runs, "federated"))), -0.01,
                                          ">="),
    }
    for local in sorted({r["model"] for r in runs if r["model"].startswith("local-")}):
        c[f"federated_vs_{local}"] = _crit(_diff(fed, _mean(runs, local, "mean_auroc")), 0.02, ">=")
    disp = _mean(runs, cur, "displacement_per_task")
    c["displacement_per_task"] = _crit(disp, 2.0, ">=")
    c["displacement_per_task_vs_naive"] = _crit(_diff(disp, _mean(runs, "naive", "displacement_per_task")),
                                                0.0, ">")
    c["displacement_hidden_reported"] = _crit(_mean(runs, cur, "displacement_hidden"), None, "reported")
    c["rollout_below_copy_every_hour"] = _crit(min(below) if below else None, HORIZON, ">=")
    c["curriculum_late_vs_naive"] = _crit(_diff(_mean(runs, cur, "drift_late"),
                                                _mean(runs, "naive", "drift_late")), 0.0, "<=")
    c["gru_minus_last_value_lr"] = _crit(_diff(gru_m, lr_m), 0.03, ">=")
    c["baselines_no_task_above_0.97"] = _crit(task_max, 0.97, "<=")
    return c


def _late(curve: Sequence[float | None] | None) -> float | None:
    late = [v for v in (curve or [])[-6:] if _ok(v)]
    return float(np.mean(late)) if late else None


def table(runs: list[dict], baselines: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown table, mean ± sd across seeds per model."""
    head = ["model", "seeds", "mean AUROC", "trained − untrained per seed (± paired bootstrap sd)",
            "displacement per task", "hidden cohorts", "drift L1 early / late", "copy baseline late",
            "hours below copy (min; not worse, paired 95 %)", "converges"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model]
        paired = ", ".join(f"s{r['seed']}: {fmt(r['paired_diff'], sign=True)}"
                           + (f" ± {r['paired_sd']:.3f}" if _ok(r.get("paired_sd")) else "")
                           for r in rs if _ok(r.get("paired_diff"))) or "–"
        below = _values(runs, model, "hours_below_copy")
        tied = _values(runs, model, "hours_not_worse_than_copy")
        hours = f"{int(min(below))}/{HORIZON}" + (f" ({int(min(tied))})" if tied else "") if below else "–"
        cells = [model, ",".join(str(r["seed"]) for r in rs),
                 fmt_pm(*mean_sd([r["mean_auroc"] for r in rs])[:2]), paired,
                 fmt_pm(*mean_sd([r["displacement_per_task"] for r in rs])[:2]),
                 fmt_pm(*mean_sd([r["displacement_hidden"] for r in rs])[:2]),
                 f"{fmt(mean_sd([r['drift_early'] for r in rs])[0])} / "
                 f"{fmt_pm(*mean_sd([r['drift_late'] for r in rs])[:2])}",
                 fmt(mean_sd([_late(r.get("copy_baseline")) for r in rs])[0]),
                 hours,
                 f"{sum(bool(r['converges']) for r in rs)}/{len(rs)}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, per_seed in baselines.items():
        vals = [v for v in per_seed.values() if _ok(v)]
        lines.append(f"| {name} | {','.join(per_seed)} | {fmt_pm(*mean_sd(vals)[:2])} |" + " – |" * 7)
    return "\n".join(lines)


def verdicts(crit: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per criterion: PASS / FAIL / not run, the value and what it needed."""
    lines = []
    for name, c in crit.items():
        state = {True: "PASS", False: "FAIL", None: "not run"}[c["pass"]]
        v = c["value"]
        hours = c["threshold"] == HORIZON
        value = "–" if v is None else f"{v:.0f}" if hours else f"{v:+.3f}"
        rule = "" if c["threshold"] is None else f" (needs {c['op']} {c['threshold']})"
        lines.append(f"  {state:8s} {name}: {value}{rule}")
    return "\n".join(lines)
