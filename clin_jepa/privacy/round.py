"""One site's DP-SGD training steps with the ledger: check budget, train on Poisson batches, account.

This is what a site runs instead of plain ``train_steps`` when DP is on (federated round or centralized
training). Steps are grouped into runs of one phase, because Opacus' hooks are attached to the modules a
phase trains; within a federated round the phase never changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import ConfigError
from clin_jepa.losses import LossConfig
from clin_jepa.models import ClinJEPA
from clin_jepa.privacy.engine import private_training
from clin_jepa.privacy.ledger import PrivacyLedger
from clin_jepa.privacy.planning import DPSettings
from clin_jepa.privacy.sampling import poisson_batches
from clin_jepa.train import Schedule, phase_loss, train_steps

# Metrics of a DP round that do not depend on the private rows beyond what the accountant assumes public
# (N through the sampling rate). Losses and embedding monitors are computed on the rows and are not
# covered by the DP guarantee, so a DP site does not report them.
PUBLIC_METRICS = ("lr", "momentum", "phase_index")


def _phase_runs(schedule: Schedule, step0: int, n_steps: int) -> list[tuple[int, int]]:
    """(first step, length) of each maximal run of steps training the same groups."""
    runs: list[tuple[int, int]] = []
    key = lambda s: schedule.at(s).phase.trainable  # noqa: E731
    for _, group in itertools.groupby(range(step0, step0 + n_steps), key=key):
        steps = list(group)
        runs.append((steps[0], len(steps)))
    return runs


def private_train_steps(model: ClinJEPA, optimizer: torch.optim.Optimizer, tensors: SiteTensors,
                        schedule: Schedule, step0: int, n_steps: int, *, ledger: PrivacyLedger,
                        settings: DPSettings, expected_batch_size: int, rnd: int,
                        loss_cfg: LossConfig | None = None, batches: Iterator | None = None,
                        **train_kwargs: Any) -> tuple[dict[str, float], int]:
    """Run DP steps ``step0 .. step0 + n_steps - 1``; return (public metrics + ledger metrics, next step).

    Raises :class:`~clin_jepa.privacy.ledger.BudgetExhausted` *before* any step when the round would take
    ε above the run's target or the site's lifetime budget. The round's steps are written to the ledger
    before the first is taken (:meth:`PrivacyLedger.reserve`), so a crash or an exception half-way leaves
    them counted: ε is never under-counted. ``num_examples`` is the expected count
    ``n_steps * expected_batch_size``, not the drawn one (which would reveal the Poisson draws).
    ``batches`` replaces the site's Poisson sampler (tests only).
    """
    loss_cfg = loss_cfg or LossConfig()
    k = max((phase_loss(loss_cfg, schedule.at(s)).rollout_steps for s in range(step0, step0 + n_steps)),
            default=loss_cfg.rollout_steps)
    # horizon heads read every look-ahead from the next-hour pass: no extra call
    ahead = loss_cfg.horizon_weight > 0 and not model.cfg.horizon_heads
    calls = k + (len(model.cfg.horizons) if ahead else 0)
    if settings.mode == "ghost" and calls > 1:
        raise ConfigError(f"DP grad-sample mode 'ghost' cannot clip a predictor called {calls} times per "
                          f"step (Opacus: parameter tying); use mode 'hooks', or rollout_steps 1 with "
                          f"finalize-rollout-steps 0 and either model.horizon_heads or horizon_weight 0")
    ledger.reserve(rnd, n_steps)
    batches = batches if batches is not None else poisson_batches(tensors, ledger.sample_rate)
    metrics: dict[str, float] = {}
    step = step0
    for first, length in _phase_runs(schedule, step0, n_steps):
        wrapped = private_training(model, optimizer, schedule.at(first).phase,
                                   noise_multiplier=ledger.noise_multiplier,
                                   max_grad_norm=settings.max_grad_norm,
                                   expected_batch_size=expected_batch_size, mode=settings.mode,
                                   loss_cfg=phase_loss(loss_cfg, schedule.at(first)))
        with wrapped as (hook, dp_opt):
            part, step = train_steps(model, batches, dp_opt, schedule, first, length, privacy=hook,
                                     loss_cfg=loss_cfg, **train_kwargs)
        metrics.update({k: v for k, v in part.items() if k in PUBLIC_METRICS})
    metrics["num_examples"] = float(n_steps * expected_batch_size)
    metrics.update(ledger.metrics())
    return metrics, step
