"""The shared hourly inputs every model reads: one definition for the encoder and the baselines.

``SiteTensors.bins`` hold, per hour and concept, the value bin of what was *measured in that hour*
(0 = nothing). A token built from that alone describes the measurement schedule, not the patient: an hour
with no lab draw would look like a patient without labs. So every model (the JEPA encoder, the last-value
LR, the GRU) reads the same three views of each concept, derived here from ``bins`` on the fly:

* ``locf`` — the last value bin measured at or before the hour (0 = never measured so far);
* ``measured`` — 1 where the concept was measured in this hour;
* ``since`` — hours since the last measurement, log-scaled to [0, 1] (1 = never or >= ``SINCE_CAP_H``).

Everything is causal (hour t uses hours <= t only) and per stay, so per-sample gradient clipping and the
"no read-out sees the future" rule hold by construction. Deriving them at batch time (instead of storing
them in the cache) lets training hide observations from the context encoder and recompute what the hidden
hours carry forward (:func:`hide_observations`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SINCE_CAP_H = 48.0
# Columns of ``SiteTensors.time`` the encoder may read: clock of day (sin, cos) and age (the GRU reads
# them too); without ``model.encoder_clock`` only age. Column 0 is the hour index of the stay, which let
# the JEPA objective be met by the clock alone; only P may read it.
ENCODER_TIME_COLUMNS = (1, 2, 3)
AGE_COLUMNS = (3,)


def carry_forward(bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, C) integer bins -> (locf bins (B,T,C) long, measured (B,T,C) float, since (B,T,C) float)."""
    b, t, c = bins.shape
    observed = bins > 0
    hours = torch.arange(t, device=bins.device).view(1, t, 1).expand(b, t, c)
    last = torch.where(observed, hours, torch.full_like(hours, -1)).cummax(dim=1).values
    seen = last >= 0
    locf = torch.gather(bins.long(), 1, last.clamp_min(0)) * seen
    gap = (hours - last).to(torch.float32).clamp(max=SINCE_CAP_H)
    since = torch.where(seen, torch.log1p(gap) / math.log1p(SINCE_CAP_H), torch.ones_like(gap))
    return locf, observed.to(torch.float32), since


def ordinal_level(locf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Carried-forward bins as ordinal levels in [0, 1] (bin / n_bins; 0 = never measured): the one
    definition the encoder's ``level_input`` and the GRU's inputs share."""
    return locf.to(torch.float32) / max(n_bins, 1)


def hide_observations(bins: torch.Tensor, prob: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each observed (hour, concept) value with probability ``prob``, independently per stay.

    The hidden hour then carries the previous value forward and its measured flag is 0, exactly as if the
    value had not been drawn, so the context encoder must infer the patient's state from what remains.
    """
    return _drop(bins, prob, bins.shape, generator)


def hide_concepts(bins: torch.Tensor, prob: float, generator: torch.Generator | None = None,
                  block_hours: int = 0) -> torch.Tensor:
    """Drop every value of each concept with probability ``prob`` per (stay, concept): for the whole stay,
    or with ``block_hours`` > 0 per consecutive block of that many hours, so a hidden concept goes stale
    for the block and then returns.

    A context encoder that must forecast a stay without one of its concepts infers it from the concepts
    that move with it: the shared direction along which deteriorating stays separate from stable ones
    (docs/displacement.md). Whole-stay hiding is what moved displacement most; 6-hour blocks keep more
    of the probes' AUROC (docs/concept-dropout.md).
    """
    n, t, c = bins.shape
    if block_hours <= 0 or prob <= 0.0:
        return _drop(bins, prob, (n, 1, c), generator)
    keep = torch.rand((n, -(-t // block_hours), c), generator=generator, device=bins.device) >= prob
    return bins * keep.repeat_interleave(block_hours, dim=1)[:, :t]


def _drop(bins: torch.Tensor, prob: float, shape: tuple[int, ...], generator: torch.Generator | None
          ) -> torch.Tensor:
    """Zero ``bins`` where a uniform draw of ``shape`` (broadcast over ``bins``) falls below ``prob``."""
    if prob <= 0.0:
        return bins
    keep = torch.rand(shape, generator=generator, device=bins.device) >= prob
    return bins * keep


def jitter_observations(bins: torch.Tensor, prob: float, n_bins: int,
                        generator: torch.Generator | None = None, max_step: int = 1) -> torch.Tensor:
    """Move each observed value up or down with probability ``prob`` by 1..``max_step`` bins (each step
    size equally likely; staying within 1..n_bins).

    A one-bin step is about the size of a measurement's noise and its slow wander around the patient's
    level, so a context encoder asked to predict the same targets from jittered values learns to read
    through them.
    """
    if prob <= 0.0:
        return bins
    move = torch.rand(bins.shape, generator=generator, device=bins.device) < prob
    sign = torch.randint(0, 2, bins.shape, generator=generator, device=bins.device) * 2 - 1
    if max_step > 1:
        sign = sign * torch.randint(1, max_step + 1, bins.shape, generator=generator, device=bins.device)
    moved = (bins + sign * move.to(bins.dtype)).clamp(1, n_bins)
    return torch.where(bins > 0, moved, bins)


def tabular_last_values(bins: np.ndarray, treat: np.ndarray, time: np.ndarray, n_bins: int,
                        context: int) -> np.ndarray:
    """(N, T, C) bins -> (N, C*(n_bins+1) + 2C + K + 1) features at the prediction time ``context``.

    One-hot of the carried-forward bin (bin 0 = never measured, the missing indicator), the measured-
    in-the-last-hour flag and hours-since per concept at hour ``context - 1``, any use of each treatment
    in the context, and age: the last-value LR's view of the same inputs the encoder reads.
    """
    locf, measured, since = carry_forward(torch.as_tensor(bins[:, :context].astype(np.int64)))
    n, _, c = locf.shape
    onehot = torch.nn.functional.one_hot(locf[:, -1], n_bins + 1).reshape(n, -1).float().numpy()
    used = (treat[:, :context] > 0).any(axis=1).astype(np.float32)
    age = time[:, 0, -1:].astype(np.float32)
    return np.concatenate([onehot, measured[:, -1].numpy(), since[:, -1].numpy(), used, age], axis=1)


def sequence_inputs(bins: np.ndarray, treat: np.ndarray, time: np.ndarray, n_bins: int,
                    context: int) -> np.ndarray:
    """(N, context, 4C + K + 3) float32 hourly inputs for a sequence model (the GRU).

    Per concept the carried-forward bin as an ordinal level (bin / n_bins; 0 with a "seen" flag of 0 when
    never measured), the seen flag, the measured flag and hours-since; then treatments and the encoder's
    time columns. The level is ordinal rather than one-hot because a trend is then a slope the recurrent
    state can follow: with one-hot bins (11 inputs per concept) the GRU over ~2,000 stays fitted noise and
    did no better than the last-value LR (measured in docs/evaluation.md).
    """
    locf, measured, since = carry_forward(torch.as_tensor(bins[:, :context].astype(np.int64)))
    level = ordinal_level(locf, n_bins)
    seen = (locf > 0).to(torch.float32)
    cols = list(ENCODER_TIME_COLUMNS)
    return np.concatenate([level.numpy(), seen.numpy(), measured.numpy(), since.numpy(), treat[:, :context],
                           time[:, :context][..., cols]], axis=2).astype(np.float32)
