"""The training curriculum as pure functions of the global step (or round).

Nothing here keeps state: ``phase_at``, ``lr_at``, ``momentum_at`` and ``boundary_actions`` are functions of
``(step, total, cfg)``, so a resumed run, or a federated client rebuilt every round, computes exactly the
values an uninterrupted run would. ``step`` counts whatever unit the caller advances (optimizer steps
when training centrally, rounds when the server drives the curriculum); ``total`` is the budget in that unit.

Phases of the ``curriculum`` mode (fractions of the budget, configurable):

1. ``warmup``   — ``E`` frozen, ``Ē = E``; only ``P`` trains on a fixed latent space.
2. ``joint``    — ``E`` and ``P`` train; ``Ē`` follows ``E`` by EMA at ``base_momentum``.
3. ``align``    — momentum ramps linearly ``base_momentum -> align_momentum`` so ``Ē`` closes the gap.
4. ``sync``     — entered with a one-time hard sync ``Ē <- E``; ``E`` and ``P`` keep training with
                  momentum 0, so ``Ē`` stays equal to ``E`` and finalization starts from ``E == Ē``.
5. ``finalize`` — ``E`` frozen (= ``Ē``); ``P`` trains on the final latent space.

A boundary action fires for a phase when its first step is executed: ``boundary_actions(a, b)`` lists the
actions of phases that start in ``[a, b)``. Callers that walk consecutive intervals ``[0, s1), [s1, s2), …``
(steps, rounds, resumed runs) therefore apply each hard sync exactly once, also for a zero-length phase.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from clin_jepa.errors import ConfigError, check_field_types

PHASES = ("warmup", "joint", "align", "sync", "finalize")
MODES = ("curriculum", "naive", "frozen-encoder", "no-ema")
HARD_SYNC = "hard_sync"


@dataclass(frozen=True)
class PhaseSpec:
    """One row of a mode's phase table; momentum moves linearly from ``momentum[0]`` to ``momentum[1]``."""

    name: str
    fraction: float
    trains_encoder: bool
    trains_predictor: bool
    momentum: tuple[float, float]
    boundary: str | None = None


@dataclass(frozen=True)
class Phase:
    """The phase in force at one step: its spec plus where it lies in the budget."""

    name: str
    index: int
    trains_encoder: bool
    trains_predictor: bool
    ema_momentum: float
    start: int
    end: int

    @property
    def trainable(self) -> tuple[str, ...]:
        """Names of the model groups whose parameters receive gradients in this phase."""
        return tuple(n for n, on in (("encoder", self.trains_encoder), ("predictor", self.trains_predictor))
                     if on)


# What a stored curriculum (checkpoint, federated run config) meant by a key it lacks: runs from before
# ``finalize_lr`` existed kept the cosine through the finalize phase, and runs from before
# ``finalize_rollout_steps`` the loss's rollout length.
STORED_DEFAULTS: dict[str, Any] = {"finalize_lr": 0.0, "finalize_rollout_steps": 0}
MAX_ROLLOUT_STEPS = 24  # each rollout step is one more predictor pass per training step


@dataclass(frozen=True)
class CurriculumConfig:
    """Phase fractions (warmup, joint, align, sync, finalize; summing to 1), EMA and learning-rate schedule.

    ``lr`` peaks after ``lr_warmup`` (fraction of the budget) of linear warmup, then follows a cosine to
    ``min_lr``; ``finalize_lr`` > 0 restarts that cosine in the finalize phase at ``finalize_lr x lr``
    (``P`` alone, on the frozen ``E`` it will be rolled out from). ``finalize_rollout_steps`` > 0 replaces
    the loss's ``rollout_steps`` there: a longer chain of ``P``'s own predictions teaches it the drift that
    compounds over a 48-hour rollout, and costs no encoder pass (0 keeps the loss's). Ablation ``mode``s
    ignore ``fractions`` except ``frozen-encoder``, which pretrains ``E`` with ``P`` for ``frozen_fraction``
    of the budget and then trains ``P`` alone on the frozen ``E``.
    """

    mode: str = "curriculum"
    fractions: tuple[float, float, float, float, float] = (0.1, 0.45, 0.2, 0.05, 0.2)
    base_momentum: float = 0.996
    align_momentum: float = 0.9
    lr: float = 6e-3
    min_lr: float = 1e-5
    lr_warmup: float = 0.05
    weight_decay: float = 0.05
    frozen_fraction: float = 0.5
    finalize_lr: float = 0.5
    finalize_rollout_steps: int = 6

    def __post_init__(self) -> None:
        check_field_types(self, "curriculum")
        if self.mode not in MODES:
            raise ConfigError(f"curriculum.mode: {self.mode!r} is not one of {list(MODES)}")
        if len(self.fractions) != len(PHASES) or any(f < 0 for f in self.fractions):
            raise ConfigError(f"curriculum.fractions: need {len(PHASES)} non-negative numbers "
                              f"({', '.join(PHASES)}), got {self.fractions!r}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ConfigError(f"curriculum.fractions: must sum to 1, got {sum(self.fractions):.6f}")
        for name in ("base_momentum", "align_momentum", "lr_warmup", "frozen_fraction", "finalize_lr"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"curriculum.{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.finalize_rollout_steps <= MAX_ROLLOUT_STEPS:
            raise ConfigError(f"curriculum.finalize_rollout_steps: must be in 0..{MAX_ROLLOUT_STEPS} "
                              f"(0 = the loss's rollout_steps), got {self.finalize_rollout_steps}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"curriculum: need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fractions"] = list(self.fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurriculumConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"curriculum config: unknown key(s) {sorted(unknown)}; "
                              f"allowed: {sorted(known)}")
        d = dict(d)
        if "fractions" in d:
            d["fractions"] = tuple(float(f) for f in d["fractions"])
        return cls(**d)


def phase_table(cfg: CurriculumConfig) -> tuple[PhaseSpec, ...]:
    """The phases of ``cfg.mode`` in order; fractions sum to 1."""
    m, a = cfg.base_momentum, cfg.align_momentum
    if cfg.mode == "naive":
        return (PhaseSpec("joint", 1.0, True, True, (m, m)),)
    if cfg.mode == "no-ema":
        return (PhaseSpec("joint", 1.0, True, True, (0.0, 0.0)),)
    if cfg.mode == "frozen-encoder":
        f = cfg.frozen_fraction
        return (PhaseSpec("joint", f, True, True, (m, m)),
                PhaseSpec("sync", 0.0, False, True, (0.0, 0.0), HARD_SYNC),
                PhaseSpec("finalize", 1.0 - f, False, True, (1.0, 1.0)))
    fw, fj, fa, fs, ff = cfg.fractions
    return (PhaseSpec("warmup", fw, False, True, (1.0, 1.0)),
            PhaseSpec("joint", fj, True, True, (m, m)),
            PhaseSpec("align", fa, True, True, (m, a)),
            PhaseSpec("sync", fs, True, True, (0.0, 0.0), HARD_SYNC),
            PhaseSpec("finalize", ff, False, True, (1.0, 1.0)))


def phase_bounds(total: int, cfg: CurriculumConfig) -> list[tuple[PhaseSpec, int, int]]:
    """``(spec, start, end)`` per phase, ``[start, end)`` in steps; consecutive, covering ``[0, total)``."""
    if total < 1:
        raise ConfigError(f"curriculum: the training budget must be >= 1 step/round, got {total}")
    out, acc = [], 0.0
    for spec in phase_table(cfg):
        start = round(acc * total)
        acc += spec.fraction
        out.append((spec, start, round(acc * total)))
    return out


def phase_at(step: int, total: int, cfg: CurriculumConfig | None = None) -> Phase:
    """The phase executing ``step`` (0-based). Steps past the budget stay in the last phase."""
    cfg = cfg or CurriculumConfig()
    bounds = phase_bounds(total, cfg)
    step = max(0, step)
    index = next((i for i, (_, s, e) in enumerate(bounds) if s <= step < e),
                 max(i for i, (_, s, e) in enumerate(bounds) if e > s))
    spec, start, end = bounds[index]
    m0, m1 = spec.momentum
    frac = min(1.0, (step - start) / max(1, end - start - 1))
    return Phase(spec.name, index, spec.trains_encoder, spec.trains_predictor, m0 + (m1 - m0) * frac,
                 start, end)


def momentum_at(step: int, total: int, cfg: CurriculumConfig | None = None) -> float:
    """EMA momentum applied after ``step``: ``Ē <- m Ē + (1 - m) E`` (1 = keep, 0 = copy)."""
    return phase_at(step, total, cfg).ema_momentum


def lr_at(step: int, total: int, cfg: CurriculumConfig | None = None) -> float:
    """Linear warmup over ``lr_warmup * total`` steps, then cosine decay from ``lr`` to ``min_lr``; with
    ``finalize_lr`` > 0 the finalize phase runs its own cosine from ``finalize_lr x lr``."""
    cfg = cfg or CurriculumConfig()
    phase = phase_at(step, total, cfg)
    if cfg.finalize_lr > 0 and phase.name == "finalize":
        progress = min(1.0, (step - phase.start) / (phase.end - phase.start))
        peak = max(cfg.finalize_lr * cfg.lr, cfg.min_lr)
        return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
    warm = max(1, round(cfg.lr_warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def rollout_steps_in(phase: str, cfg: CurriculumConfig) -> int:
    """The rollout length the curriculum sets for ``phase``; 0 = the loss's ``rollout_steps``."""
    return cfg.finalize_rollout_steps if phase == "finalize" else 0


def boundary_actions(step_from: int, step_to: int, total: int,
                     cfg: CurriculumConfig | None = None) -> tuple[str, ...]:
    """Actions of the phases whose first step lies in ``[step_from, step_to)``, in phase order."""
    cfg = cfg or CurriculumConfig()
    return tuple(spec.boundary for spec, start, _ in phase_bounds(total, cfg)
                 if spec.boundary and step_from <= start < step_to)


@dataclass(frozen=True)
class StepPlan:
    """Everything a training step needs from the schedule: phase, lr, EMA momentum, boundary actions, and
    the rollout length (0 = the loss's)."""

    phase: Phase
    lr: float
    momentum: float
    actions: tuple[str, ...] = ()
    rollout_steps: int = 0


@dataclass(frozen=True)
class CurriculumSchedule:
    """The full curriculum over ``total`` optimizer steps (centralized training)."""

    cfg: CurriculumConfig
    total: int

    def at(self, step: int) -> StepPlan:
        phase = phase_at(step, self.total, self.cfg)
        return StepPlan(phase, lr_at(step, self.total, self.cfg), phase.ema_momentum,
                        boundary_actions(step, step + 1, self.total, self.cfg),
                        rollout_steps_in(phase.name, self.cfg))


@dataclass(frozen=True)
class FixedSchedule:
    """One federated round: the server already chose phase, lr and momentum and applied boundary actions.

    The default momentum 1.0 leaves ``Ē`` untouched on the client (the server owns the EMA target).
    """

    phase: Phase
    lr: float
    momentum: float = 1.0

    def at(self, step: int) -> StepPlan:
        return StepPlan(self.phase, self.lr, self.momentum)
