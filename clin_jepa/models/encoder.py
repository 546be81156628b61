"""Encoder ``E``: one token per hour (the patient's carried-forward state + treatments) -> latent ``z_t``."""

from __future__ import annotations

import torch
from torch import nn

from clin_jepa.data.features import AGE_COLUMNS, ENCODER_TIME_COLUMNS, carry_forward, ordinal_level
from clin_jepa.errors import ConfigError
from clin_jepa.models.config import ModelConfig
from clin_jepa.models.layers import CausalTransformer


class Encoder(nn.Module):
    """``encoder(batch) -> (B, T, d_enc)``; ``z_t`` depends on hours ``<= t`` only.

    An hour's input embedding describes the patient, not only what was measured that hour: per concept
    one learned vector for its carried-forward value bin (a row per (concept, bin) pair; bin 0 = never
    measured so far), plus linear maps of the measured-this-hour flags, the hours since each concept was
    measured, the treatment indicators, clock of day and age; layer-normed before the causal transformer.
    No absolute hour index enters (see ``ModelConfig.encoder_positions``): the hour of the stay alone
    explained most of the latent variance when it did.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.values = nn.Embedding(cfg.n_concepts * (cfg.n_bins + 1), cfg.d_enc)
        self.measured = nn.Linear(cfg.n_concepts, cfg.d_enc)
        self.since = nn.Linear(cfg.n_concepts, cfg.d_enc)
        self.level = nn.Linear(cfg.n_concepts, cfg.d_enc) if cfg.level_input else None
        self.treat = nn.Linear(cfg.n_treatments, cfg.d_enc)
        columns = ENCODER_TIME_COLUMNS if cfg.encoder_clock else AGE_COLUMNS
        self.time = nn.Linear(len(columns), cfg.d_enc)
        self.ln_in = nn.LayerNorm(cfg.d_enc)
        self.backbone = CausalTransformer(cfg.d_enc, cfg.enc_layers, cfg.enc_heads, cfg.mlp_ratio,
                                          cfg.max_hours if cfg.encoder_positions else 0)
        self.register_buffer("offsets", torch.arange(cfg.n_concepts) * (cfg.n_bins + 1), persistent=False)
        self.register_buffer("time_columns", torch.tensor(columns), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        bins = batch["bins"]
        if bins.shape[1] > self.cfg.max_hours:
            raise ConfigError(f"batch has {bins.shape[1]} hours but the model was built for at most "
                              f"max_hours={self.cfg.max_hours}")
        locf, measured, since = carry_forward(bins)
        h = self.values(locf + self.offsets).sum(dim=-2)
        h = h + self.measured(measured) + self.since(since) + self.treat(batch["treat"])
        if self.level is not None:
            h = h + self.level(ordinal_level(locf, self.cfg.n_bins).to(h.dtype))
        h = h + self.time(batch["time"].index_select(-1, self.time_columns))
        return self.backbone(self.ln_in(h), batch["pos"])
