"""Clin-JEPA objective: latent prediction (teacher forcing + k-step rollout + look-ahead horizons), an
auxiliary forecast of the next hours' observations, and a per-sample anti-collapse term.

Every term is computed per sample and only averaged over the batch at the very end (``reduction="mean"``),
or returned per sample (``reduction="none"``), so per-sample gradient clipping (Opacus DP-SGD, including
ghost clipping) sees a loss in which no sample's value depends on another sample. In particular the
anti-collapse term uses *within-sample* statistics only (across the hours of one stay), never batch
statistics like VICReg/SIGReg.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# LossConfig lives apart, free of torch: the ClientApp and the run config read it before any training
from clin_jepa.loss_config import LossConfig
from clin_jepa.models.predictor import ALL_HORIZONS

Predictor = Callable[..., torch.Tensor]


def layer_normed_targets(target_latents: torch.Tensor) -> torch.Tensor:
    """Targets live in the layer-normed (no affine) space of ``Ē``'s output."""
    return F.layer_norm(target_latents, (target_latents.shape[-1],))


def _masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample mean |pred - target| over the (hour, dim) cells with weight 1; (B,)."""
    err = (pred.float() - target.float()).abs().mean(dim=-1)
    return (err * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


def rollout_losses(predictor: Predictor, z: torch.Tensor, target: torch.Tensor,
                   batch: dict[str, torch.Tensor], k: int, first: torch.Tensor | None = None,
                   ) -> list[torch.Tensor]:
    """Per-sample L1 for rollout steps 1..k; each entry is (B,).

    Step 1 is teacher forcing: row t of ``P(z)`` predicts ``target[t+1]``. Step j > 1 feeds ``P`` the
    sequence whose hour t (t >= j-1) is the (j-1)-step prediction made from hours ``<= t-(j-1)`` (earlier
    hours keep the true latents), and scores row t against ``target[t+1]`` for t >= j-1 only: every
    scored prediction is exactly j steps away from the last true latent it could see. All t are
    computed in parallel, so k steps cost k predictor passes. Hours count when both t and t+1 are
    inside the stay (``mask``). ``first`` is ``P(z)`` when the caller already has it (horizon heads).
    """
    mask = batch["mask"]
    pair = (mask[:, :-1] & mask[:, 1:]).to(torch.float32)
    nxt = target[:, 1:]
    seq, losses = z, []
    for j in range(1, k + 1):
        pred = first if j == 1 and first is not None else predictor(seq, batch)
        weight = pair.clone()
        weight[:, : j - 1] = 0.0
        losses.append(_masked_l1(pred[:, :-1], nxt, weight))
        if j < k:
            # hour t of the next input = prediction made at row t-1; hours < j keep the true latents
            seq = torch.cat([z[:, :j], pred[:, j - 1: -1].to(z.dtype)], dim=1)
    return losses


def horizon_losses(predictor: Predictor, z: torch.Tensor, target: torch.Tensor,
                   batch: dict[str, torch.Tensor], horizons: tuple[int, ...],
                   preds: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per-sample L1 of P's look-ahead predictions: row t (horizon i+1) vs ``target[t + h_i]``, scored
    where both hours lie in the stay; each entry is (B,). ``preds`` (B, T, len(horizons), d) are those
    predictions when one pass already made them (horizon heads); otherwise one pass per horizon."""
    mask = batch["mask"]
    out = []
    for i, h in enumerate(horizons):
        if h >= z.shape[1]:
            continue
        pred = preds[:, :, i] if preds is not None else predictor(z, batch, horizon=i + 1)
        weight = (mask[:, :-h] & mask[:, h:]).to(torch.float32)
        out.append(_masked_l1(pred[:, :-h], target[:, h:], weight))
    return out


def observation_loss(predictor: Predictor, z: torch.Tensor, bins: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of the observation head: from ``z_t``, the value bin of every concept
    measured at hour ``t + h`` (h = 1..H, both hours in the stay), averaged over those cells; (B,)."""
    logits = predictor(z, {}, observe=True).float()
    b, t, n_h, c, n_bins = logits.shape
    # Targets for every (hour, horizon) cell first, then one cross-entropy over the whole tensor: slicing
    # the logits per horizon made autograd zero-fill and re-add a full-size gradient for each of them,
    # and CPU log_softmax over a 10-wide last dimension is several times slower than logsumexp.
    tgt = torch.zeros(b, t, n_h, c, dtype=torch.long, device=z.device)
    valid = torch.zeros(b, t, n_h, c, dtype=torch.bool, device=z.device)
    for h in range(1, min(n_h, t - 1) + 1):
        tgt[:, :-h, h - 1] = bins[:, h:]
        valid[:, :-h, h - 1] = (bins[:, h:] > 0) & (mask[:, :-h] & mask[:, h:]).unsqueeze(-1)
    picked = logits.gather(-1, (tgt - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ce = (logits.logsumexp(-1) - picked) * valid
    return ce.sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3)).clamp_min(1.0)


def collapse_penalty(z: torch.Tensor, mask: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-sample hinge ``mean_d relu(floor - std_t(LN(z)[t, d]))`` over the stay's hours; (B,)."""
    zn = F.layer_norm(z.float(), (z.shape[-1],))
    m = mask.to(torch.float32).unsqueeze(-1)
    n = m.sum(dim=1).clamp_min(2.0)
    mean = (zn * m).sum(dim=1) / n
    var = (((zn - mean.unsqueeze(1)) ** 2) * m).sum(dim=1) / (n - 1.0)
    return F.relu(floor - torch.sqrt(var + 1e-4)).mean(dim=-1)


def model_terms(model_cfg: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of :func:`jepa_loss` that a model's config switches on (its look-ahead
    horizons and whether one pass gives them all, and the full value bins when it has an observation
    head)."""
    return {"horizons": tuple(model_cfg.horizons), "horizon_heads": bool(model_cfg.horizon_heads),
            "obs_bins": batch["bins"] if model_cfg.obs_horizons else None}


def idle_heads(predictor: nn.Module, cfg: LossConfig) -> list[nn.Module]:
    """The predictor's heads this objective never calls (look-ahead heads at ``horizon_weight`` 0, the
    observation head at ``obs_weight`` 0). DP-SGD leaves them out: Opacus needs a per-sample gradient for
    every parameter it trains, and an idle head has none."""
    heads = ((getattr(predictor, "ahead", None), cfg.horizon_weight),
             (getattr(predictor, "obs_head", None), cfg.obs_weight))
    return [head for head, weight in heads if head is not None and weight == 0]


def jepa_loss(predictor: Predictor, z: torch.Tensor, target: torch.Tensor, batch: dict[str, torch.Tensor],
              cfg: LossConfig, with_collapse: bool = True, reduction: str = "mean", *,
              horizons: tuple[int, ...] = (), horizon_heads: bool = False,
              obs_bins: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (detached batch means, kept on device so logging does not sync).

    ``target`` must already be layer-normed and detached. ``with_collapse`` adds the anti-collapse term
    (only useful when ``z`` carries gradients to the encoder). ``horizons`` (the model's) adds the
    look-ahead terms (``horizon_heads``: all of them from the next-hour pass, ``horizon=ALL_HORIZONS``);
    ``obs_bins`` (the full, unhidden value bins) adds the observation forecast.
    ``reduction="none"`` returns (B,).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    z_jepa = z if cfg.jepa_to_encoder else z.detach()
    ahead = horizons and cfg.horizon_weight > 0
    shared = predictor(z_jepa, batch, horizon=ALL_HORIZONS) if ahead and horizon_heads else None
    steps = rollout_losses(predictor, z_jepa, target, batch, cfg.rollout_steps,
                           None if shared is None else shared[:, :, 0])
    total = steps[0]
    if len(steps) > 1:
        total = total + cfg.rollout_weight * torch.stack(steps[1:]).mean(dim=0)
    parts: dict[str, torch.Tensor] = {}
    if ahead:
        ahead_terms = horizon_losses(predictor, z_jepa, target, batch, horizons,
                                     None if shared is None else shared[:, :, 1:])
        if ahead_terms:
            ahead_mean = torch.stack(ahead_terms).mean(dim=0)
            total = total + cfg.horizon_weight * ahead_mean
            parts["loss_ahead"] = ahead_mean.detach().mean()
    if obs_bins is not None and cfg.obs_weight > 0:
        obs = observation_loss(predictor, z, obs_bins, batch["mask"])
        total = total + cfg.obs_weight * obs
        parts["loss_obs"] = obs.detach().mean()
    collapse = collapse_penalty(z, batch["mask"], cfg.collapse_floor)
    if with_collapse and cfg.collapse_weight > 0:
        total = total + cfg.collapse_weight * collapse
    parts.update({f"loss_step{j + 1}": s.detach().mean() for j, s in enumerate(steps)})
    parts["collapse"] = collapse.detach().mean()
    parts["loss"] = total.detach().mean()
    return (total.mean() if reduction == "mean" else total), parts
