"""Encoder ``E``: one token per hour (set of concept value-bins + treatments + time) -> latent ``z_t``."""

from __future__ import annotations

import torch
from torch import nn

from clin_jepa.errors import ConfigError
from clin_jepa.models.config import ModelConfig
from clin_jepa.models.layers import CausalTransformer


class Encoder(nn.Module):
    """``encoder(batch) -> (B, T, d_enc)``; ``z_t`` depends on hours ``<= t`` only.

    An hour's input embedding is the sum of one learned vector per *observed* concept (a row per
    (concept, bin) pair; bin 0 = unobserved contributes nothing), a linear map of the treatment
    indicators and of the time features, layer-normed before the causal transformer.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.values = nn.Embedding(cfg.n_concepts * (cfg.n_bins + 1), cfg.d_enc)
        self.treat = nn.Linear(cfg.n_treatments, cfg.d_enc)
        self.time = nn.Linear(cfg.n_time, cfg.d_enc)
        self.ln_in = nn.LayerNorm(cfg.d_enc)
        self.backbone = CausalTransformer(cfg.d_enc, cfg.enc_layers, cfg.enc_heads, cfg.mlp_ratio,
                                          cfg.max_hours)
        self.register_buffer("offsets", torch.arange(cfg.n_concepts) * (cfg.n_bins + 1), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        bins = batch["bins"]
        if bins.shape[1] > self.cfg.max_hours:
            raise ConfigError(f"batch has {bins.shape[1]} hours but the model was built for at most "
                              f"max_hours={self.cfg.max_hours}")
        observed = (bins > 0).unsqueeze(-1)
        tokens = self.values(bins + self.offsets)
        h = (tokens * observed.to(tokens.dtype)).sum(dim=-2)
        h = h + self.treat(batch["treat"]) + self.time(batch["time"])
        return self.backbone(self.ln_in(h), batch["pos"])
