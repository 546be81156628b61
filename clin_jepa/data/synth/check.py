"""Are the tasks of a dataset learnable but not trivial? Positive rates and a last-value baseline.

Reads a site through the project's own MEDS reader and harmonizer (so it checks the written files and
the site config together, not the simulator's internals), then per task: the positive rate among
eligible stays with a defined label, and the held-out AUROC of a logistic regression on the last
observed canonical value of each measurement in the first 24 h (median-imputed, plus missing flags),
fit on the train split. A generator that leaks the answer would show rates near 0/1 or AUROCs near 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clin_jepa.config import SiteConfig
from clin_jepa.data.concepts import load_concepts
from clin_jepa.data.harmonize import HOUR_US, CodeMapper, eligible_stay_events, harmonize
from clin_jepa.data.meds import SPLIT_CODE, iter_shards, read_splits
from clin_jepa.data.tasks import TaskSpec, compute_labels, load_tasks

CONTEXT_HOURS = 24


@dataclass(frozen=True)
class TaskCheck:
    task: str
    positive_rate: float  # over eligible stays of all splits with a defined label
    n_defined: int
    auroc: float  # held-out AUROC of the last-value baseline; NaN if held_out has a single class
    n_held_out: int

    def format(self) -> str:
        return (f"{self.task:22s} positive {100 * self.positive_rate:5.1f}% of {self.n_defined:5d}   "
                f"last-value LR AUROC {self.auroc:.3f} (held_out n={self.n_held_out})")


@dataclass(frozen=True)
class LastValues:
    """One row per eligible stay: last canonical value per measurement in hours [0, 24) (NaN = none),
    task labels (NaN = undefined) and split code (0 train, 1 tuning, 2 held_out)."""

    features: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    concepts: tuple[str, ...]


def last_values(cfg: SiteConfig, tasks: tuple[TaskSpec, ...]) -> LastValues:
    """Stream the site's shards and collect first-day last values and labels of every eligible stay."""
    table = load_concepts()
    measurements = table.measurement_names
    column = np.full(len(table.names), -1)
    for j, name in enumerate(measurements):
        column[table.index(name)] = j
    mapper = CodeMapper(cfg)
    splits = read_splits(cfg.data_path)
    horizon = int(max([CONTEXT_HOURS, *(t.horizon_hours for t in tasks)]))
    feats, labels, split = [], [], []
    for shard in iter_shards(cfg.data_path):
        _, stays, ev = eligible_stay_events(harmonize(shard, mapper), horizon)
        x = np.full((len(stays), len(measurements)), np.nan)
        col = column[ev.concept]
        sel = np.flatnonzero((ev.offset < CONTEXT_HOURS * HOUR_US) & (col >= 0) & np.isfinite(ev.value))
        sel = sel[np.lexsort((ev.offset[sel], col[sel], ev.stay[sel]))]
        x[ev.stay[sel], col[sel]] = ev.value[sel]  # later writes win: the last value stays
        feats.append(x)
        labels.append(compute_labels(tasks, stays, ev))
        split.append(np.array([splits.get(int(s), -1) for s in stays.subject], dtype=np.int8))
    return LastValues(np.concatenate(feats), np.concatenate(labels), np.concatenate(split), measurements)


def _design(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    missing = np.isnan(x)
    seen = ~missing[train].all(axis=0)  # a concept never measured in train gets a constant column
    fill = np.zeros(x.shape[1])
    fill[seen] = np.nanmedian(x[train][:, seen], axis=0)
    return np.hstack([np.where(missing, fill, x), missing.astype(float)])


def task_report(cfg: SiteConfig, tasks: tuple[TaskSpec, ...] | None = None) -> list[TaskCheck]:
    """Positive rate and held-out last-value LR AUROC per task (see the module docstring)."""
    tasks = load_tasks() if tasks is None else tasks
    lv = last_values(cfg, tasks)
    train, held = lv.split == SPLIT_CODE["train"], lv.split == SPLIT_CODE["held_out"]
    x = _design(lv.features, train)
    out = []
    for j, spec in enumerate(tasks):
        y = lv.labels[:, j]
        defined = np.isfinite(y)
        fit, test = train & defined, held & defined
        auroc = float("nan")
        if len(np.unique(y[fit])) == 2 and len(np.unique(y[test])) == 2:
            model = make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear", max_iter=1000))
            model.fit(x[fit], y[fit])
            auroc = float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
        rate = float(y[defined].mean()) if defined.any() else float("nan")
        out.append(TaskCheck(spec.name, rate, int(defined.sum()), auroc, int(test.sum())))
    return out
