"""Rollout drift: how far the predictor's own autoregressive rollout strays from the target encoder.

Conventions shared by every function here (and by :mod:`clin_jepa.evaluation.geometry`):

* Hours are indexed from 0 at stay start; the prediction time is the end of hour index ``context - 1``
  (``context = 24``: hours 0..23 are observed). Horizon hour ``h`` (1-based) is hour index
  ``context - 1 + h``, so a 72-hour grid carries horizons 1..48.
* Latents are compared after ``layer_norm`` over the feature dimension, the space the training loss
  uses for its targets, so a model cannot look better by shrinking its latent scale.
* A horizon hour counts for a stay only if that hour lies inside the stay (``mask``); hours after
  discharge or death are excluded, never imputed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

EARLY = (1, 6)
LATE = (43, 48)
Z95 = 1.96  # two-sided 95 % normal quantile


def drift_curve(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean latent L1 per horizon hour.

    ``pred`` and ``target`` are (N, H, D) latents for horizons 1..H, ``valid`` is (N, H) bool. The L1 is
    the mean absolute difference over D (the training loss's scale), averaged over the valid stays of each
    horizon. Returns (curve (H,), counts (H,)); a horizon with no valid stay is NaN.
    """
    return _hour_means(_stay_l1(pred, target, valid), valid)


def _hour_means(err: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = valid.sum(axis=0)
    total = np.where(valid, err, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    return curve, counts


def _stay_l1(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N, H) mean absolute latent difference over D per stay and horizon hour."""
    if pred.shape != target.shape or pred.shape[:2] != valid.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape}, target {target.shape}, valid {valid.shape}")
    return np.abs(pred.astype(np.float64) - target.astype(np.float64)).mean(axis=2)


def copy_gap(pred: np.ndarray, copy: np.ndarray, target: np.ndarray,
             valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per horizon hour, the mean over valid stays of (rollout L1 − copy L1) on the same stay and its
    standard error: a paired comparison, in which the spread between stays cancels. Negative = the
    rollout is closer than copying. (H,) each; NaN where an hour has fewer than two stays."""
    return _paired_gap(_stay_l1(pred, target, valid), _stay_l1(copy, target, valid), valid)


def rollout_against_copy(pred: np.ndarray, copy: np.ndarray, target: np.ndarray, valid: np.ndarray,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(curve, counts, copy curve, :func:`copy_gap`) with each stay's L1 computed once (the (N, H, D)
    differences are the costly part at hospital scale)."""
    err, err_copy = _stay_l1(pred, target, valid), _stay_l1(copy, target, valid)
    curve, counts = _hour_means(err, valid)
    return curve, counts, _hour_means(err_copy, valid)[0], _paired_gap(err, err_copy, valid)


def _paired_gap(err: np.ndarray, err_copy: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    diff = np.where(valid, err - err_copy, 0.0)
    n = valid.sum(axis=0).astype(np.float64)
    enough = n >= 2
    mean = np.where(enough, diff.sum(axis=0) / np.maximum(n, 1), np.nan)
    sq = np.where(valid, (diff - np.nan_to_num(mean)) ** 2, 0.0).sum(axis=0)
    se = np.where(enough, np.sqrt(sq / np.maximum(n - 1, 1) / np.maximum(n, 1)), np.nan)
    return mean, se


def relative_change(curve: np.ndarray, early: tuple[int, int] = EARLY, late: tuple[int, int] = LATE) -> float:
    """(late − early) / early on the mean of 1-based inclusive horizon windows; negative = converges.

    NaN when either window is empty or the early error is zero (a perfect early predictor has no scale
    to be relative to).
    """
    e = window_mean(curve, early)
    lt = window_mean(curve, late)
    if not np.isfinite(e) or not np.isfinite(lt) or e == 0.0:
        return float("nan")
    return float((lt - e) / e)


def window_mean(curve: np.ndarray, window: tuple[int, int]) -> float:
    """Mean of the finite values of a 1-based inclusive horizon window (NaN if none)."""
    lo, hi = window
    part = np.asarray(curve, dtype=np.float64)[lo - 1 : hi]
    part = part[np.isfinite(part)]
    return float(part.mean()) if part.size else float("nan")


def copy_forward(copy: np.ndarray, horizon: int) -> np.ndarray:
    """(N, D) latent at the prediction time -> (N, horizon, D): the guess "nothing changes"."""
    return np.repeat(copy[:, None, :], horizon, axis=1)


def converges(curve: np.ndarray, copy_curve: np.ndarray) -> bool:
    """Below the copy baseline at every horizon hour (that has stays) and late <= early.

    The relative change alone rewards a model that is uniformly bad; beating "nothing changes" at every
    hour is what shows the rollout has learned dynamics.
    """
    c, k = np.asarray(curve, np.float64), np.asarray(copy_curve, np.float64)
    both = np.isfinite(c) & np.isfinite(k)
    early, late = window_mean(c, EARLY), window_mean(c, LATE)
    return bool(both.any() and np.all(c[both] < k[both]) and late <= early)


def drift_summary(curve: np.ndarray, counts: np.ndarray, copy_curve: np.ndarray,
                  gap: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """What the report shows of one rollout: absolute L1 per horizon hour beside the copy baseline, and
    with ``gap`` (:func:`copy_gap`) the paired difference per hour and ``hours_not_worse_than_copy``: the
    hours at which the 95 % interval of that difference reaches zero or below (a tie counts, a loss the
    interval shows does not)."""
    extra = {}
    if gap is not None:
        mean, se = gap
        extra = {"copy_gap": mean, "copy_gap_se": se,
                 "hours_not_worse_than_copy": int(np.sum(np.isfinite(mean) & (mean - Z95 * se <= 0)))}
    return {**extra, "curve": curve, "counts": counts, "copy_curve": copy_curve,
            "relative_change": relative_change(curve),
            "early": window_mean(curve, EARLY), "late": window_mean(curve, LATE),
            "copy_early": window_mean(copy_curve, EARLY), "copy_late": window_mean(copy_curve, LATE),
            "hours_below_copy": int(np.sum(np.asarray(curve) < np.asarray(copy_curve))),
            "converges": converges(curve, copy_curve),
            "early_hours": list(EARLY), "late_hours": list(LATE)}


Predictor = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def layer_norm(z: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(z, (z.shape[-1],))


@torch.no_grad()
def autoregressive_rollout(
    predictor: Predictor, z_context: torch.Tensor, batch: dict[str, torch.Tensor], horizon: int
) -> torch.Tensor:
    """Roll ``predictor`` forward ``horizon`` hours from the context latents, feeding its own outputs.

    ``z_context`` is (B, c, D), the latents of hours 0..c-1; ``batch`` holds the stays' hourly inputs
    for at least c + horizon hours. Row t of the predictor's output guesses hour t+1 and may read hour
    t+1's true treatments from ``batch``, so each step runs the predictor on the sequence so far plus one
    placeholder row, with ``batch`` cut to that length, and keeps row t. The placeholder cannot leak into
    row t because the predictor is causal. Returns (B, horizon, D) guesses for hours c..c+horizon-1.
    Recomputing the prefix each step equals a KV cache, only slower; clarity wins at evaluation sizes.
    """
    b, c, d = z_context.shape
    seq = torch.cat([z_context, z_context.new_zeros(b, horizon, d)], dim=1)
    for step in range(horizon):
        t = c + step - 1
        sub = {k: v[:, : t + 2] for k, v in batch.items() if k != "labels" and v.dim() >= 2}
        seq[:, t + 1] = predictor(seq[:, : t + 2], sub)[:, t]
    return seq[:, c:].clone()
