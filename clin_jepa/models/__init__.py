"""Clin-JEPA networks: encoder ``E``, target encoder ``Ē`` (EMA copy), latent trajectory predictor ``P``."""

from clin_jepa.models.config import PRESETS, ModelConfig, preset
from clin_jepa.models.encoder import Encoder
from clin_jepa.models.jepa import GROUPS, ClinJEPA, get_group_state, set_group_state
from clin_jepa.models.predictor import Predictor

__all__ = ["GROUPS", "PRESETS", "ClinJEPA", "Encoder", "ModelConfig", "Predictor", "get_group_state",
           "preset", "set_group_state"]
