"""The Clin-JEPA bundle: ``E``, ``Ē`` and ``P`` plus per-group state exchange (federation, checkpoints)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from clin_jepa.errors import CheckpointError
from clin_jepa.models.config import ModelConfig
from clin_jepa.models.encoder import Encoder
from clin_jepa.models.predictor import Predictor

GROUPS = ("encoder", "target_encoder", "predictor")


class ClinJEPA(nn.Module):
    """Holds the three networks. Invariants: ``target_encoder`` starts as an exact copy of ``encoder``,
    has ``requires_grad=False`` on every parameter and only ever changes through EMA updates or copies.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = Predictor(cfg)

    def groups(self) -> dict[str, nn.Module]:
        """Parameter groups exchanged phase by phase: encoder, target_encoder, predictor."""
        return {name: getattr(self, name) for name in GROUPS}

    def online_parameters(self, names: tuple[str, ...] = ("encoder", "predictor")) -> list[nn.Parameter]:
        return [p for name in names for p in getattr(self, name).parameters()]


def _group(model: ClinJEPA, name: str) -> nn.Module:
    if name not in GROUPS:
        raise CheckpointError(f"unknown parameter group {name!r}; expected one of {list(GROUPS)}")
    return getattr(model, name)


def get_group_state(model: ClinJEPA, name: str) -> dict[str, torch.Tensor]:
    """Detached CPU copies of one group's tensors, keyed like its ``state_dict``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in _group(model, name).state_dict().items()}


def set_group_state(model: ClinJEPA, name: str, state: dict[str, torch.Tensor]) -> None:
    """Load one group in place; every key must match and every shape must agree."""
    module = _group(model, name)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"group {name!r} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in bad[:5]]}")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k])
