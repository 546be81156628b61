"""Predictor ``P``: causal over hours; ``z_{<=t}`` (+ treatments of hour t+1) -> guess of ``z_{t+h}``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clin_jepa.models.config import ModelConfig
from clin_jepa.models.layers import CausalTransformer

ALL_HORIZONS = -1  # ``horizon=ALL_HORIZONS``: every horizon's prediction from one pass (horizon heads)


def next_hour_treatments(treat: torch.Tensor) -> torch.Tensor:
    """(B,T,K) -> (B,T,K) whose row t holds hour t+1's treatments (zeros after the last hour)."""
    return torch.cat([treat[:, 1:], torch.zeros_like(treat[:, :1])], dim=1)


class Predictor(nn.Module):
    """``predictor(z, batch, horizon=0) -> (B, T, d_enc)``: row t predicts the layer-normed target latent of
    hour ``t + h`` (h = 1, or ``cfg.horizons[horizon - 1]``).

    Inputs are layer-normed (no affine) before projection, so online latents and the predictor's own
    outputs (which live in the layer-normed target space) can be fed back interchangeably in rollouts.
    With ``cfg.residual`` the output is ``LN(z_t) + Δ``: a patient's state mostly persists from one hour
    to the next, so P learns the change and copying the last latent is its starting point, not a target
    it has to find. ``observe=True`` instead returns the observation head's logits
    (B, T, obs_horizons, n_concepts, n_bins): the value bins of the next hours, forecast from ``z_t``.
    It lives in ``P``'s parameter group so federation, checkpoints and DP treat it like ``P``.

    The look-ahead horizons are asked for either by a learned horizon embedding added to the input (one
    pass per horizon) or, with ``cfg.horizon_heads``, by one output head per horizon on the same pass:
    ``horizon=ALL_HORIZONS`` then returns (B, T, 1 + len(horizons), d_enc), the next hour first.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.d_enc, cfg.d_pred)
        self.treat = nn.Linear(cfg.n_treatments, cfg.d_pred) if cfg.treat_conditioning else None
        self.horizon = self.ahead = None
        if cfg.horizons and cfg.horizon_heads:
            self.ahead = nn.Linear(cfg.d_pred, len(cfg.horizons) * cfg.d_enc)
        elif cfg.horizons:
            self.horizon = nn.Embedding(len(cfg.horizons) + 1, cfg.d_pred)
            nn.init.normal_(self.horizon.weight, std=0.02)
        self.backbone = CausalTransformer(cfg.d_pred, cfg.pred_layers, cfg.pred_heads, cfg.mlp_ratio,
                                          cfg.max_hours)
        self.out = nn.Linear(cfg.d_pred, cfg.d_enc)
        self.obs_head = None
        if cfg.obs_horizons:
            self.obs_head = nn.Linear(cfg.d_enc, cfg.obs_horizons * cfg.n_concepts * cfg.n_bins)

    def forward(self, z: torch.Tensor, batch: dict[str, torch.Tensor], horizon: int = 0,
                observe: bool = False) -> torch.Tensor:
        zn = F.layer_norm(z, (z.shape[-1],))
        if observe:
            if self.obs_head is None:
                raise ValueError("this predictor was built without an observation head (obs_horizons=0)")
            c = self.cfg
            return self.obs_head(zn).view(*z.shape[:2], c.obs_horizons, c.n_concepts, c.n_bins)
        x = self.inp(zn)
        if self.treat is not None:
            x = x + self.treat(next_hour_treatments(batch["treat"]))
        if self.horizon is not None:
            x = x + self.horizon(torch.full_like(batch["pos"], horizon))
        h = self.backbone(x, batch["pos"])
        if self.ahead is not None and horizon != 0:
            ahead = self.ahead(h).view(*h.shape[:2], len(self.cfg.horizons), self.cfg.d_enc)
            delta = torch.cat([self.out(h).unsqueeze(2), ahead], dim=2)
            out = zn.unsqueeze(2) + delta if self.cfg.residual else delta
            return out if horizon == ALL_HORIZONS else out[:, :, horizon]
        delta = self.out(h)
        return zn + delta if self.cfg.residual else delta
