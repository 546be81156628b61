"""One local-training function shared by the centralized trainer and the federated client.

``train_steps`` keeps no global state: everything a step needs comes from its arguments (model, batch
iterator, optimizer, a schedule giving phase/lr/momentum per global step), so a Flower client can rebuild
the model from arrays each round and call it with the server's schedule.

Each step reads as three labelled parts, as in I-JEPA / V-JEPA 2:
1. target forward under ``no_grad`` through ``Ē``, layer-normed;
2. context forward through ``E`` and ``P`` + loss + optimizer step (only the phase's groups get gradients);
3. EMA update ``Ē <- m Ē + (1 - m) E``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
from torch import nn

from clin_jepa.curriculum import HARD_SYNC, CurriculumConfig, Phase, StepPlan
from clin_jepa.data.features import hide_concepts, hide_observations, jitter_observations
from clin_jepa.losses import LossConfig, idle_heads, jepa_loss, layer_normed_targets, model_terms
from clin_jepa.models import ClinJEPA
from clin_jepa.monitors import embedding_monitors, parameter_drift

Batch = dict[str, torch.Tensor]


class Schedule(Protocol):
    def at(self, step: int) -> StepPlan: ...


class PrivacyHook(Protocol):
    """Seam for DP-SGD. The model's online modules and the optimizer arrive already wrapped (Opacus);
    the hook only decides how the per-sample loss becomes gradients and does the accounting."""

    def before_step(self, step: int) -> None:
        """May raise ``PrivacyBudgetExceeded`` before any gradient is computed."""

    def backward(self, per_sample_loss: torch.Tensor) -> None:
        """Turn the (B,) per-sample loss into gradients (e.g. ghost clipping's two passes)."""

    def after_step(self, step: int) -> None:
        """Called after ``optimizer.step()``."""


def build_optimizer(model: ClinJEPA, cfg: CurriculumConfig,
                    groups: tuple[str, ...] = ("encoder", "predictor")) -> torch.optim.AdamW:
    """AdamW over the parameters of ``groups`` (default: all online ones, E and P; a DP client passes
    ``phase.trainable`` so every optimized parameter gets per-sample gradients). Parameters of a frozen
    group get no gradient, and AdamW skips those, so they stay bitwise unchanged (no weight decay either).
    Matrices and embeddings decay; biases and LayerNorm weights do not."""
    if "target_encoder" in groups:
        raise ValueError("the target encoder is never optimized (it follows E by EMA)")
    decay, no_decay = [], []
    for name in groups:
        for p in getattr(model, name).parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def set_trainable(model: ClinJEPA, phase: Phase, loss_cfg: LossConfig | None = None) -> None:
    """The phase's groups train, less the heads ``loss_cfg`` never calls (``idle_heads``: they would get no
    gradient anyway, and DP-SGD needs a per-sample gradient for every parameter it trains)."""
    model.encoder.requires_grad_(phase.trains_encoder)
    model.predictor.requires_grad_(phase.trains_predictor)
    model.target_encoder.requires_grad_(False)
    for head in idle_heads(model.predictor, loss_cfg or LossConfig()):
        head.requires_grad_(False)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``; 0 copies exactly, 1 leaves it untouched."""
    if momentum >= 1.0:
        return
    pairs = list(zip(target.parameters(), online.parameters(), strict=True))
    t = [a for a, _ in pairs]
    o = [b.detach() for _, b in pairs]
    if momentum <= 0.0:
        torch._foreach_copy_(t, o)
    else:
        torch._foreach_lerp_(t, o, 1.0 - momentum)


def apply_boundary(model: ClinJEPA, actions: tuple[str, ...]) -> None:
    """Run a phase's boundary actions; ``hard_sync`` copies ``E`` into ``Ē`` exactly."""
    for action in actions:
        if action != HARD_SYNC:
            raise ValueError(f"unknown boundary action {action!r}")
        ema_update(model.target_encoder, model.encoder, 0.0)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def phase_loss(loss_cfg: LossConfig, plan: StepPlan) -> LossConfig:
    """The loss with the rollout length the schedule sets for this step (0 = the loss's own)."""
    if plan.rollout_steps and plan.rollout_steps != loss_cfg.rollout_steps:
        return dataclasses.replace(loss_cfg, rollout_steps=plan.rollout_steps)
    return loss_cfg


def train_steps(model: ClinJEPA, batches: Iterator[Batch], optimizer: torch.optim.Optimizer,
                schedule: Schedule, step0: int, n_steps: int, privacy: PrivacyHook | None = None, *,
                loss_cfg: LossConfig | None = None, device: str | torch.device = "cpu", amp: bool = True,
                log_every: int = 0, on_log: Callable[[int, dict[str, float]], None] | None = None,
                seed: int = 0) -> tuple[dict[str, float], int]:
    """Run global steps ``step0 .. step0 + n_steps - 1``; return (mean metrics over them, next step).

    ``amp`` enables bf16 autocast on CUDA (ignored on CPU). Every ``log_every`` steps and after the last
    step, ``on_log(step, metrics)`` receives that step's losses, loss per rollout step and the
    collapse/drift monitors.
    The returned metrics also carry ``num_examples`` (samples seen, for FedAvg weighting).
    Which observations ``E`` does not see (``loss_cfg.context_mask``) is a pure function of
    ``(seed, step)``, like the batches, so a resumed or federated run hides the same values.
    """
    loss_cfg = loss_cfg or LossConfig()
    device = torch.device(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
                else contextlib.nullcontext())
    sums: dict[str, torch.Tensor] = {}
    n_examples = n_scored = 0
    plan = None
    for step in range(step0, step0 + n_steps):
        plan = schedule.at(step)
        apply_boundary(model, plan.actions)
        set_trainable(model, plan.phase, phase_loss(loss_cfg, plan))
        for group in optimizer.param_groups:
            group["lr"] = plan.lr
        if privacy is not None:
            privacy.before_step(step)
        cpu_batch = next(batches)
        context = _context_batch(cpu_batch, loss_cfg if plan.phase.trains_encoder else None,
                                 model.cfg.n_bins, seed, step)
        batch, context = _to_device(cpu_batch, device), _to_device(context, device)
        batch_size = int(batch["mask"].shape[0])
        n_examples += batch_size

        with autocast:
            # 1. target forward: Ē under no_grad, layer-normed
            with torch.no_grad():
                target = layer_normed_targets(model.target_encoder(batch).float())
            # 2. context forward (E sees the context with some observations hidden) + loss
            z = model.encoder(context)
            per_sample, parts = jepa_loss(model.predictor, z, target, batch, phase_loss(loss_cfg, plan),
                                          with_collapse=plan.phase.trains_encoder, reduction="none",
                                          **model_terms(model.cfg, batch))
        optimizer.zero_grad(set_to_none=True)
        if privacy is not None:
            privacy.backward(per_sample)
        else:
            per_sample.mean().backward()
        optimizer.step()
        if privacy is not None:
            privacy.after_step(step)

        # 3. EMA update of the target encoder
        ema_update(model.target_encoder, model.encoder, plan.momentum)

        if batch_size:  # an empty Poisson batch (DP-SGD) still steps, but has no loss to average
            n_scored += 1
            for k, v in parts.items():
                sums[k] = sums[k] + v if k in sums else v
        last = step == step0 + n_steps - 1
        if on_log is not None and log_every > 0 and ((step + 1) % log_every == 0 or last):
            on_log(step, {**{k: float(v) for k, v in parts.items()}, **_plan_metrics(plan),
                          **embedding_monitors(z.detach(), batch["mask"], batch["pos"]),
                          "drift": parameter_drift(model.encoder, model.target_encoder)})
    metrics = {k: float(v) / max(1, n_scored) for k, v in sums.items()}
    if plan is not None:
        metrics.update(_plan_metrics(plan))
    metrics["num_examples"] = float(n_examples)
    return metrics, step0 + n_steps


def _context_batch(batch: Batch, cfg: LossConfig | None, n_bins: int, seed: int, step: int) -> Batch:
    if cfg is None or max(cfg.context_mask, cfg.concept_dropout, cfg.value_jitter) <= 0.0:
        return batch
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    bins = hide_concepts(hide_observations(batch["bins"], cfg.context_mask, gen), cfg.concept_dropout, gen,
                         cfg.concept_block_hours)
    return {**batch, "bins": jitter_observations(bins, cfg.value_jitter, n_bins, gen, cfg.jitter_bins)}


def _plan_metrics(plan: StepPlan) -> dict[str, float]:
    return {"lr": plan.lr, "momentum": plan.momentum, "phase_index": float(plan.phase.index)}
