"""Running a trained ClinJEPA over prepared stays: latents, rollouts and probe features, in batches.

Which network produces what (documented in ``docs/evaluation.md``):

* drift and geometry targets — ``Ē`` (target encoder), layer-normed: the space the training loss targets;
* rollout context — ``E`` (online encoder) on hours 0..23, the inputs ``P`` was trained to read; after
  the curriculum's hard sync and finalization ``E == Ē``;
* copy baseline — ``LN(E)`` at hour 23 held constant over the horizon: what a predictor that has learned
  nothing about dynamics would guess;
* probe features — ``Ē``'s layer-normed latent at hour 23 (the 24 h prediction time) concatenated with
  the mean of its layer-normed latents over hours 0..23 (stays are at least 24 h long, so every hour of
  the context is inside the stay).

Only ``target`` hours < context may feed a read-out: the rollout reads the true treatments of the hours it
predicts (a drift measurement, never a feature; an untrained model's probe on it scored 0.791 AUROC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clin_jepa.data.dataset import make_loader
from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.evaluation.drift import autoregressive_rollout, layer_norm


@dataclass
class Encoded:
    """Per-stay arrays for one model on one set of stays (all float32 numpy)."""

    target: np.ndarray  # (N, T, D) layer-normed Ē latents
    rollout: np.ndarray | None  # (N, H, D) predictor rollout from the prediction time, or None if not asked
    copy: np.ndarray | None  # (N, D) layer-normed E latent at the prediction time (the copy baseline)


@torch.no_grad()
def encode(model: torch.nn.Module, tensors: SiteTensors, *, context: int, horizon: int | None,
           batch_size: int = 128, device: str = "cpu") -> Encoded:
    """Target latents of every hour and, when ``horizon`` is given, the predictor's rollout, in row order."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    targets, rolls, copies = [], [], []
    for cpu_batch in make_loader(tensors, batch_size, seed=0, shuffle=False):
        batch = {k: v.to(dev) for k, v in cpu_batch.items()}
        targets.append(layer_norm(model.target_encoder(batch)).cpu().numpy())
        if horizon is not None:
            z_ctx = model.encoder(batch)[:, :context]
            rolls.append(autoregressive_rollout(model.predictor, z_ctx, batch, horizon).cpu().numpy())
            copies.append(layer_norm(z_ctx[:, -1]).cpu().numpy())
    d = model.cfg.d_enc
    t = tensors.hours
    target = np.concatenate(targets) if targets else np.zeros((0, t, d), np.float32)
    rollout = copy = None
    if horizon is not None:
        rollout = np.concatenate(rolls) if rolls else np.zeros((0, horizon, d), np.float32)
        copy = np.concatenate(copies) if copies else np.zeros((0, d), np.float32)
    return Encoded(target=target, rollout=rollout, copy=copy)


def probe_features(target: np.ndarray, context: int) -> np.ndarray:
    """(N, T, D) layer-normed Ē latents -> (N, 2D): latent at hour context-1 ‖ mean over hours < context."""
    return np.concatenate([target[:, context - 1], target[:, :context].mean(axis=1)], axis=1)
