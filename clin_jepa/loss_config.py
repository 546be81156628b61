"""The Clin-JEPA objective's settings (``clin_jepa.losses`` computes it). Kept free of torch: the run
config (``clin_jepa.federation``) and the ClientApp, which loads before any training, read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from clin_jepa.errors import ConfigError, check_field_types


@dataclass(frozen=True)
class LossConfig:
    """``rollout_steps`` = k (1 = teacher forcing only); ``collapse_floor`` is the hinge target for the
    per-sample, per-dimension std over hours of the layer-normed online latents.

    ``horizon_weight`` scores P's look-ahead predictions (the model's ``horizons``: t+3, t+6, t+12);
    ``obs_weight`` the observation head's forecast of the next hours' value bins; ``context_mask`` is the
    probability that each observed value is hidden from ``E`` (not from ``Ē``) in phases that train
    ``E``; ``concept_dropout`` the probability that a concept is hidden from ``E`` for the whole stay
    (or, with ``concept_block_hours`` > 0, for each block of that many hours: 6 gave +0.008 AUROC on
    each of five seeds for -0.02 displacement, docs/concept-dropout.md);
    ``value_jitter`` the probability that each observed value ``E`` sees (after that hiding) moves up or
    down by 1..``jitter_bins`` bins. Jitter 0.25 by one bin raised displacement by 0.19 on average at
    -0.001 mean AUROC (3 x 1000 patients); concept dropout 0.1 with jitter of up to two bins (the
    defaults since 2026-12-04) took it from 1.90 to 2.02 at -0.008 mean AUROC, still above the GRU.
    ``jepa_to_encoder=False`` stops the latent-prediction gradient at ``E``'s output (the control
    that shows how much of the gain is the auxiliary forecast alone). The hinge is off by default
    (``collapse_weight`` 0; its value is still logged as the ``collapse`` monitor): a floor on each stay's
    own spread over its hours asks the latent of a stable patient to move. Measured effects:
    docs/experiments.md, docs/displacement.md.
    """

    rollout_steps: int = 2
    rollout_weight: float = 1.0
    collapse_weight: float = 0.0  # off: the hinge pushed stable stays' latents to move (docs/displacement.md)
    collapse_floor: float = 0.5
    horizon_weight: float = 1.0
    obs_weight: float = 0.5
    context_mask: float = 0.4
    concept_dropout: float = 0.1
    concept_block_hours: int = 0  # 0: a hidden concept is hidden for the whole stay
    value_jitter: float = 0.25
    jitter_bins: int = 2
    jepa_to_encoder: bool = True

    def __post_init__(self) -> None:
        check_field_types(self, "loss")
        if self.rollout_steps < 1:
            raise ConfigError(f"loss.rollout_steps: must be >= 1, got {self.rollout_steps}")
        if min(self.rollout_weight, self.collapse_weight, self.collapse_floor, self.horizon_weight,
               self.obs_weight) < 0:
            raise ConfigError("loss: weights and collapse_floor must be >= 0")
        for name in ("context_mask", "concept_dropout", "value_jitter"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"loss.{name}: a probability in [0, 1) expected, got {getattr(self, name)}")
        if self.concept_block_hours < 0:
            raise ConfigError(f"loss.concept_block_hours: hours per hidden block (0 = the whole stay), >= 0 "
                              f"expected, got {self.concept_block_hours}")
        if self.jitter_bins < 1:
            raise ConfigError(f"loss.jitter_bins: the largest jitter step, >= 1 bin expected, got "
                              f"{self.jitter_bins}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"loss config: unknown key(s) {sorted(unknown)}")
        return cls(**d)
