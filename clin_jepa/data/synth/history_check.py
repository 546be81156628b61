"""Does the first-day history carry information beyond the last values? The generator's acceptance check.

Per data seed: write synthetic hospitals, run the federated statistics round (site histograms → merged
→ quantile edges) as training would, tokenize every site, pool the splits, and score the two supervised
baselines of ``clin-jepa evaluate`` — the last-value logistic regression and the GRU over the 24 h
context — through :func:`clin_jepa.evaluation.runner.evaluate_baselines`, on the shared inputs of
``clin_jepa.data.features``. The generator passes when the GRU beats the last-value LR by at least
``min_gain`` mean AUROC on every seed while no task of either model exceeds ``max_task_auroc`` (so the
gain comes from trajectories, not from a task that gives itself away).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MIN_GAIN = 0.03
MAX_TASK_AUROC = 0.97


@dataclass(frozen=True)
class SeedResult:
    """Held-out AUROCs of both baselines on the pooled sites of one data seed."""

    seed: int
    lr_tasks: dict[str, float]
    gru_tasks: dict[str, float]
    positive_rates: dict[str, dict[str, float]]  # site -> task -> rate among stays with a defined label
    load: tuple[float, float, float]  # 1/5/15-minute load average when the figures were done
    seconds: float = 0.0

    @property
    def lr(self) -> float:
        return float(np.nanmean(list(self.lr_tasks.values())))

    @property
    def gru(self) -> float:
        return float(np.nanmean(list(self.gru_tasks.values())))

    @property
    def gain(self) -> float:
        return self.gru - self.lr

    @property
    def max_task(self) -> float:
        return float(np.nanmax([*self.lr_tasks.values(), *self.gru_tasks.values()]))


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def _task_aurocs(result: Any) -> dict[str, float]:
    """Per-task AUROC of a baseline's result (a ``ProbeResult``, or its ``{"probes": to_dict()}`` form)."""
    if isinstance(result, dict):
        tasks = result["probes"]["tasks"].values()
        return {t["task"]: float("nan") if t["skipped"] else float(t["auroc"]) for t in tasks}
    return {t.task: float("nan") if t.skipped else float(t.auroc) for t in result.tasks}


def fresh_sites(out: Path, n_sites: int, n_patients: int, seed: int, hours: int = 72
                ) -> tuple[list[Any], Any, list[Any]]:
    """Regenerate ``n_sites`` hospitals into ``out`` and tokenize them with their pooled quantile edges:
    (site configs, discretization, one SiteTensors per site)."""
    from clin_jepa.config import load_site_config
    from clin_jepa.data.stats import compute_site_statistics, merge_statistics, quantile_edges
    from clin_jepa.data.synth import synthesize
    from clin_jepa.data.tasks import load_tasks
    from clin_jepa.data.tokenize import build_site_tensors

    outputs = synthesize(out, n_sites, n_patients, seed, force=True)
    cfgs = [load_site_config(o.config) for o in outputs]
    disc = quantile_edges(merge_statistics([compute_site_statistics(c) for c in cfgs]))
    tasks = load_tasks()
    # No tensor cache: a regenerated folder must never be read through tensors of older data.
    return cfgs, disc, [build_site_tensors(c, disc, tasks, hours, use_cache=False) for c in cfgs]


def check_seed(seed: int, n_patients: int = 1000, n_sites: int = 3, work: str | Path | None = None
               ) -> SeedResult:
    """Generate ``n_sites`` hospitals of ``n_patients`` with ``seed`` (in ``work``, else a temporary
    folder) and score both baselines as ``evaluate_baselines`` does."""
    import time

    from clin_jepa.data.tokenize import SiteTensors
    from clin_jepa.evaluation.runner import EvalSettings, evaluate_baselines

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synth-check-") as tmp:
        out = Path(work) / f"seed{seed}" if work is not None else Path(tmp)
        cfgs, disc, sites = fresh_sites(out, n_sites, n_patients, seed)
    rates = {}
    for cfg, st in zip(cfgs, sites, strict=True):
        defined = np.isfinite(st.labels)
        rates[cfg.site] = {t: float(np.nanmean(st.labels[:, j])) if defined[:, j].any() else float("nan")
                           for j, t in enumerate(st.tasks)}
    pooled = SiteTensors.concat(sites)
    train, tune, held = (pooled.subset(name) for name in ("train", "tuning", "held_out"))
    res = evaluate_baselines(train, tune, held, disc.n_bins, EvalSettings())
    return SeedResult(seed, _task_aurocs(res["last_value_lr"]), _task_aurocs(res["gru"]), rates,
                      os.getloadavg(), time.perf_counter() - start)


def verdict(results: Sequence[SeedResult], min_gain: float = MIN_GAIN,
            max_task_auroc: float = MAX_TASK_AUROC) -> Verdict:
    """Pass when every seed's GRU − LR gain is ≥ ``min_gain`` and no task AUROC exceeds the cap."""
    reasons = []
    for r in results:
        if not r.gain >= min_gain:
            reasons.append(f"seed {r.seed}: GRU − LR = {r.gain:+.3f} < {min_gain:.3f}")
        if not r.max_task <= max_task_auroc:
            reasons.append(f"seed {r.seed}: a task reaches AUROC {r.max_task:.3f} > {max_task_auroc:.2f}")
    return Verdict(bool(results) and not reasons, reasons if results else ["no seed was run"])


def format_table(results: Sequence[SeedResult]) -> str:
    """One line per seed, then per task the AUROCs and per-site positive rates (in %)."""
    lines = [f"{'seed':>4} {'LR':>6} {'GRU':>6} {'diff':>7} {'max task':>8}  load(1/5/15)   time"]
    for r in results:
        lines.append(f"{r.seed:>4} {r.lr:6.3f} {r.gru:6.3f} {r.gain:+7.3f} {r.max_task:8.3f}  "
                     f"{r.load[0]:.1f}/{r.load[1]:.1f}/{r.load[2]:.1f}   {r.seconds:.0f} s")
    for r in results:
        sites = list(r.positive_rates)
        lines.append(f"seed {r.seed}: {'task':22s} {'LR':>6} {'GRU':>6}  positive % " + " ".join(
            f"{s[-1]:>5}" for s in sites))
        for task in r.lr_tasks:
            rates = " ".join(f"{100 * r.positive_rates[s][task]:5.1f}" for s in sites)
            aurocs = f"{r.lr_tasks[task]:6.3f} {r.gru_tasks[task]:6.3f}"
            lines.append(f"        {task:22s} {aurocs}{' ' * 13}{rates}")
    return "\n".join(lines)
