"""Predictor ``P``: causal over hours; ``z_{<=t}`` (+ treatments of hour t+1) -> guess of ``z_{t+1}``."""

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
    """``predictor(z, batch) -> (B, T, d_enc)``: row t predicts the layer-normed target latent of hour t+1.

    Inputs are layer-normed (no affine) before projection, so online latents and the predictor's own
    outputs (which live in the layer-normed target space) can be fed back interchangeably in rollouts.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.d_enc, cfg.d_pred)
        self.treat = nn.Linear(cfg.n_treatments, cfg.d_pred) if cfg.treat_conditioning else None
        self.backbone = CausalTransformer(cfg.d_pred, cfg.pred_layers, cfg.pred_heads, cfg.mlp_ratio,
                                          cfg.max_hours)
        self.out = nn.Linear(cfg.d_pred, cfg.d_enc)

    def forward(self, z: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.inp(F.layer_norm(z, (z.shape[-1],)))
        if self.treat is not None:
            x = x + self.treat(next_hour_treatments(batch["treat"]))
        return self.out(self.backbone(x, batch["pos"]))
