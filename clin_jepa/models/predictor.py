"""Predictor ``P``: causal over hours; ``z_{<=t}`` (+ treatments of hour t+1) -> guess of ``z_{t+h}``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clin_jepa.models.config import ModelConfig
from clin_jepa.models.layers import CausalTransformer


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
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.d_enc, cfg.d_pred)
        self.treat = nn.Linear(cfg.n_treatments, cfg.d_pred) if cfg.treat_conditioning else None
        self.horizon = None
        if cfg.horizons:
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
        delta = self.out(self.backbone(x, batch["pos"]))
        return zn + delta if self.cfg.residual else delta
