"""Latent geometry: do deteriorating stays travel further in latent space than stable ones?

Cohort splits (each compares the mean displacement of a "sick" group with that of a "stable" group):

* **per task** (:func:`per_task_ratios`, real data) — stays positive for that task vs stays negative for
  every task (every *defined* label 0, at least one defined; NaN = task not measured). Summarized as the
  mean ratio over tasks, ``displacement_per_task``.
* **hidden** (synthetic data, ``--ground-truth``) — the generator's truly deteriorating stays vs its
  ``stable`` cohort (:mod:`clin_jepa.evaluation.ground_truth`).
* **any label** (:func:`cohorts`, kept for the plot when no ground truth is given) — any task positive vs
  all negative. Not a cohort split: each threshold task fires in 8–17 % of truly stable stays, so most
  stable stays land in the "deteriorating" group.

Displacement of a stay (:func:`displacement`) is the Euclidean distance between its layer-normed
target-encoder latent around the prediction time and around its last in-stay hour of the horizon (means
over a few hours). Stays that end at the prediction time have no displacement (NaN).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

STABLE, DETERIORATING, UNDEFINED = 0, 1, -1


def cohorts(labels: np.ndarray) -> np.ndarray:
    """(N, n_tasks) 0/1/NaN labels -> (N,) int8 of STABLE / DETERIORATING / UNDEFINED."""
    labels = np.asarray(labels, dtype=np.float64)
    positive = (np.nan_to_num(labels, nan=0.0) > 0.5).any(axis=1)
    defined = np.isfinite(labels).any(axis=1)
    out = np.full(len(labels), UNDEFINED, dtype=np.int8)
    out[defined & ~positive] = STABLE
    out[positive] = DETERIORATING
    return out


def displacement(z: np.ndarray, mask: np.ndarray, context: int = 24, window: int = 6) -> np.ndarray:
    """(N, T, D) latents and (N, T) in-stay mask -> (N,) displacement over the horizon.

    Distance between the mean latent of the last ``window`` context hours (ending at the prediction
    time) and the mean latent of the last ``window`` in-stay hours of the horizon (fewer if the stay
    has fewer horizon hours). Averaging a few hours keeps the hour-to-hour swing of which concepts
    happened to be measured from dominating; ``window=1`` is the plain endpoint distance. Stays are
    contiguous from hour 0 (the SiteTensors contract).
    """
    n, t, _ = z.shape
    z = z.astype(np.float64)
    start = z[:, max(0, context - window) : context].mean(axis=1)
    in_horizon = mask[:, context:]
    n_h = in_horizon.sum(axis=1)
    hours = np.arange(context, t)[None, :]
    last = context + n_h[:, None] - 1
    sel = in_horizon & (hours > last - window)
    counts = sel.sum(axis=1, keepdims=True)
    end = (z[:, context:] * sel[..., None]).sum(axis=1) / np.maximum(counts, 1)
    d = np.linalg.norm(end - start, axis=1)
    return np.where(n_h > 0, d, np.nan)


def displacement_ratio(disp: np.ndarray, cohort: np.ndarray) -> dict[str, float]:
    """Mean displacement of deteriorating stays ÷ that of stable stays, with the two means and counts.

    The ratio is NaN when either cohort has no stay with a horizon or the stable mean is zero.
    """
    return group_ratio(disp, cohort == DETERIORATING, cohort == STABLE)


def per_task_ratios(disp: np.ndarray, labels: np.ndarray, tasks: list[str]) -> dict:
    """Per task: stays positive for it vs stays negative for every task; plus the mean ratio over tasks
    (``displacement_per_task``, NaN-ratios left out)."""
    labels = np.asarray(labels, dtype=np.float64)
    stable = cohorts(labels) == STABLE
    per = {t: group_ratio(disp, np.nan_to_num(labels[:, j], nan=0.0) > 0.5, stable)
           for j, t in enumerate(tasks)}
    ratios = [r["ratio"] for r in per.values() if np.isfinite(r["ratio"])]
    return {"displacement_per_task": float(np.mean(ratios)) if ratios else float("nan"), "tasks": per}


def group_ratio(disp: np.ndarray, sick: np.ndarray, stable: np.ndarray) -> dict[str, float]:
    """Mean displacement of the ``sick`` rows ÷ that of the ``stable`` rows (boolean masks)."""
    det = disp[sick & np.isfinite(disp)]
    sta = disp[stable & np.isfinite(disp)]
    m_det = float(det.mean()) if det.size else float("nan")
    m_sta = float(sta.mean()) if sta.size else float("nan")
    ratio = m_det / m_sta if det.size and sta.size and m_sta > 0 else float("nan")
    return {
        "ratio": float(ratio),
        "mean_deteriorating": m_det,
        "mean_stable": m_sta,
        "n_deteriorating": int(det.size),
        "n_stable": int(sta.size),
    }


def projection_2d(z: np.ndarray, mask: np.ndarray, context: int = 24, seed: int = 0) -> np.ndarray:
    """PCA of all in-stay hourly latents of the horizon onto 2-D; returns the (N, T, 2) projection.

    Fitting on the horizon hours (from the prediction time on) keeps the axes about the movement the
    displacement measures. Out-of-stay hours are projected too but should not be drawn.
    """
    n, t, d = z.shape
    pts = z[:, context - 1 :][mask[:, context - 1 :]]
    pca = PCA(n_components=2, random_state=seed).fit(pts.astype(np.float64))
    return pca.transform(z.reshape(n * t, d).astype(np.float64)).reshape(n, t, 2)
