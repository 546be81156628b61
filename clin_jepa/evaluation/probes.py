"""Linear probes and their scores: scikit-learn does the fitting and the metrics, this module the plumbing.

A probe is a standardized logistic regression fit on the train split and scored on held_out. Per task,
only stays with a defined label (not NaN) take part. A task whose train or held_out labels have a single
class is skipped with a note, since neither fitting nor AUROC is defined there.

The inverse regularization strength ``C`` is chosen per task on the tuning split, as the GRU baseline
chooses its epoch there: one fit on train per value of :data:`PROBE_CS`, the best tuning AUROC wins (ties go
to the stronger regularization). Without a tuning split with both classes for the task, ``C`` is
:data:`DEFAULT_C`. A fixed ``C`` under-reports every embedding, most of all wide ones and untrained ones
(measured in docs/evaluation.md), and the choice is never made on held_out.

Confidence intervals are percentile bootstrap intervals over held_out stays, seeded; resamples that
happen to hold a single class are discarded (and counted) rather than scored.

The noise of the *mean* AUROC over tasks (:func:`bootstrap_mean_auroc`) resamples held_out stays once per
replicate for every task and every model together, so the spread of a difference between two models
scored on the same stays (a trained run and its untrained control) is measured paired, not summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

Metric = Callable[[np.ndarray, np.ndarray], float]
PROBE_CS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_C = 1.0
METRICS: dict[str, Metric] = {"auroc": roc_auc_score, "auprc": average_precision_score}


def bootstrap_ci(
    y: np.ndarray, score: np.ndarray, metric: Metric, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1 − alpha) interval of ``metric(y, score)``; (nan, nan) if n_boot is 0."""
    rng = np.random.default_rng(seed)
    n = len(y)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        vals.append(metric(yb, score[idx]))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


@dataclass
class TaskScore:
    """Scores of one task; ``skipped`` holds the reason when the task could not be scored."""

    task: str
    n_train: int = 0
    n_test: int = 0
    n_test_pos: int = 0
    c: float = float("nan")  # the probe's inverse regularization strength (nan = not fitted)
    auroc: float = float("nan")
    auroc_ci: tuple[float, float] = (float("nan"), float("nan"))
    auprc: float = float("nan")
    auprc_ci: tuple[float, float] = (float("nan"), float("nan"))
    skipped: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ProbeResult:
    tasks: list[TaskScore] = field(default_factory=list)
    # (n_test, n_tasks) held_out probabilities, NaN where the label is undefined or the task skipped;
    # kept in memory for the paired bootstrap, not written to metrics.json
    scores: np.ndarray | None = None

    @property
    def mean_auroc(self) -> float:
        vals = [t.auroc for t in self.tasks if t.skipped is None]
        return float(np.mean(vals)) if vals else float("nan")

    def to_dict(self) -> dict:
        return {"mean_auroc": self.mean_auroc, "tasks": {t.task: t.to_dict() for t in self.tasks}}


def score_task(
    task: str, y_test: np.ndarray, p_test: np.ndarray, n_train: int, n_boot: int, seed: int
) -> TaskScore:
    """AUROC/AUPRC of held_out probabilities with bootstrap intervals (labels already filtered)."""
    out = TaskScore(task, n_train=n_train, n_test=len(y_test), n_test_pos=int(y_test.sum()))
    out.auroc = float(roc_auc_score(y_test, p_test))
    out.auprc = float(average_precision_score(y_test, p_test))
    out.auroc_ci = bootstrap_ci(y_test, p_test, roc_auc_score, n_boot, seed)
    out.auprc_ci = bootstrap_ci(y_test, p_test, average_precision_score, n_boot, seed)
    return out


def single_class_reason(y_train: np.ndarray, y_test: np.ndarray) -> str | None:
    for name, y in (("train", y_train), ("held_out", y_test)):
        if len(y) == 0:
            return f"no {name} stay has this label defined"
        if y.min() == y.max():
            return f"{name} split has a single class ({int(y[0])}, n={len(y)})"
    return None


def _probe(c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=c))


def select_c(x_train: np.ndarray, y_train: np.ndarray, tune: tuple[np.ndarray, np.ndarray] | None
             ) -> tuple[float, Pipeline]:
    """(C, probe fit on train with it): the C of :data:`PROBE_CS` with the best tuning AUROC, or
    :data:`DEFAULT_C` when ``tune`` (features, 0/1 labels) is None or holds a single class."""
    if tune is None or len(tune[1]) == 0 or tune[1].min() == tune[1].max():
        return DEFAULT_C, _probe(DEFAULT_C).fit(x_train, y_train)
    fits = [(c, _probe(c).fit(x_train, y_train)) for c in PROBE_CS]
    aucs = [roc_auc_score(tune[1], clf.predict_proba(tune[0])[:, 1]) for _, clf in fits]
    return fits[int(np.argmax(aucs))]  # the first best: PROBE_CS ascends, so ties regularize more


def fit_linear_probes(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    task_names: Sequence[str],
    n_boot: int = 200,
    seed: int = 0,
    tune: tuple[np.ndarray, np.ndarray] | None = None,
) -> ProbeResult:
    """One standardized LogisticRegression per task on fixed features; labels (N, n_tasks) 0/1/NaN.

    ``tune`` = (features, labels) of the tuning split selects each task's ``C`` (:func:`select_c`)."""
    result = ProbeResult(scores=np.full((len(x_test), len(task_names)), np.nan))
    for j, task in enumerate(task_names):
        tr = np.isfinite(y_train[:, j])
        te = np.isfinite(y_test[:, j])
        ytr, yte = y_train[tr, j].astype(int), y_test[te, j].astype(int)
        reason = single_class_reason(ytr, yte)
        if reason is not None:
            result.tasks.append(TaskScore(task, n_train=len(ytr), n_test=len(yte), skipped=reason))
            continue
        task_tune = None
        if tune is not None:
            tu = np.isfinite(tune[1][:, j])
            task_tune = (tune[0][tu], tune[1][tu, j].astype(int))
        c, clf = select_c(x_train[tr], ytr, task_tune)
        p = clf.predict_proba(x_test[te])[:, 1]
        result.scores[te, j] = p
        score = score_task(task, yte, p, len(ytr), n_boot, seed + j)
        score.c = c
        result.tasks.append(score)
    return result


def bootstrap_mean_auroc(y_test: np.ndarray, scores: dict[str, np.ndarray], n_boot: int = 200,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Mean AUROC over tasks of each model on ``n_boot`` shared resamples of the held_out stays.

    ``scores[name]`` is a :attr:`ProbeResult.scores` array for the labels ``y_test`` (N, n_tasks). A task
    enters a replicate when it was scored for every model and its resampled defined labels hold both
    classes. Returns name -> (n_kept,) replicate means; ``np.std`` of a difference of two of them is the
    paired noise of that difference.
    """
    names = list(scores)
    if not names or n_boot < 1:
        return {n: np.zeros(0) for n in names}
    usable = np.all([np.isfinite(scores[n]).any(axis=0) for n in names], axis=0)
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_test), len(y_test))
        per: dict[str, list[float]] = {n: [] for n in names}
        for j in np.flatnonzero(usable):
            yb = y_test[idx, j]
            ok = np.isfinite(yb) & np.all([np.isfinite(scores[n][idx, j]) for n in names], axis=0)
            if ok.sum() < 2 or yb[ok].min() == yb[ok].max():
                continue
            for n in names:
                per[n].append(roc_auc_score(yb[ok].astype(int), scores[n][idx, j][ok]))
        if per[names[0]]:
            for n in names:
                out[n].append(float(np.mean(per[n])))
    return {n: np.asarray(v) for n, v in out.items()}
