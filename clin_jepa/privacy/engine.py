"""Opacus DP-SGD around the online modules of one training phase.

:func:`private_training` attaches Opacus' per-sample-gradient hooks to exactly the groups the phase trains
(``E`` and/or ``P``) and wraps the optimizer in a ``DPOptimizer``; ``Ē`` never gets hooks or gradients
(it only ever sees the online weights through the EMA, which is post-processing). The modules stay the same
objects (Opacus' hook classes attach without wrapping), so parameter names, ``get_group_state`` and the
optimizer's state are unchanged, and leaving the context removes every hook.

Invariants:

* a DP step clips every sample's gradient over *all* trained parameters jointly to ``max_grad_norm``, adds
  ``N(0, (noise_multiplier * max_grad_norm)^2)`` to the sum and divides by the *expected* batch size;
* noise comes from a generator seeded from the operating system's entropy, never from the run's public
  seed (the server knows that seed and could otherwise subtract the noise);
* each ``optimizer.step()`` is one step of the accountant at ``(noise_multiplier, sample_rate)``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from clin_jepa.curriculum import Phase
from clin_jepa.errors import ConfigError
from clin_jepa.losses import LossConfig
from clin_jepa.models import ClinJEPA
from clin_jepa.privacy.planning import GRAD_SAMPLE_MODES
from clin_jepa.train import set_trainable

if TYPE_CHECKING:  # Opacus is imported where DP runs: it doubles the import time of every ClientApp process
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer



@dataclass
class OpacusHook:
    """The :class:`clin_jepa.train.PrivacyHook` for one phase: backward through Opacus and count steps.

    ``steps`` counts optimizer steps taken under DP since the hook was made; the caller's ledger turns
    them into privacy spent.
    """

    hooks: GradSampleHooks
    optimizer: DPOptimizer
    mode: str
    steps: int = 0
    empty_batches: int = 0
    _seen: list[int] = field(default_factory=list)

    def before_step(self, step: int) -> None:
        self._seen.append(step)

    def backward(self, per_sample_loss: torch.Tensor) -> None:
        if per_sample_loss.ndim != 1:
            raise ValueError(f"DP-SGD needs a (B,) per-sample loss, got shape {tuple(per_sample_loss.shape)}")
        if per_sample_loss.shape[0] == 0:
            self._empty_batch()
            return
        if self.mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            # Two passes: per-sample gradient norms (no per-sample gradients held), then the clipped sum.
            DPTensorFastGradientClipping(self.hooks, self.optimizer, per_sample_loss, "mean").backward()
        else:
            per_sample_loss.mean().backward()

    def after_step(self, step: int) -> None:
        self.steps += 1

    def _empty_batch(self) -> None:
        """An empty Poisson batch still takes its step: the optimizer releases noise around a zero sum.

        Opacus' per-layer samplers cannot backpropagate a batch of size 0, so the activations the forward
        pass captured are dropped here and every trained parameter gets an empty per-sample gradient
        (ghost mode: a zero gradient, which its optimizer treats as the clipped sum).
        """
        self.empty_batches += 1
        for m in self.hooks._module.modules():
            if "activations" in m.__dict__:
                m.activations.clear()
            m.__dict__.pop("max_batch_len", None)
        for p in self.optimizer.params:
            p._forward_counter = 0
            if self.mode == "ghost":
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))


def _noise_generator(device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(secrets.randbits(63))
    return gen


@contextlib.contextmanager
def private_training(model: ClinJEPA, optimizer: torch.optim.Optimizer, phase: Phase, *,
                     noise_multiplier: float, max_grad_norm: float, expected_batch_size: int,
                     mode: str = "hooks",
                     loss_cfg: LossConfig | None = None) -> Iterator[tuple[OpacusHook, DPOptimizer]]:
    """Within the block, train ``phase``'s groups with DP-SGD: yields (privacy hook, DP optimizer).

    Pass both to ``train_steps`` (``optimizer=dp_optimizer, privacy=hook``) with batches drawn by Poisson
    sampling at rate ``expected_batch_size / N``. The phase must stay the same inside the block (the
    hooks are attached to the modules trainable when it starts: the phase's groups less the heads
    ``loss_cfg`` never calls, as ``train_steps`` sets them).
    """
    from opacus.grad_sample import GradSampleHooks, GradSampleHooksFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"DP grad-sample mode {mode!r} is not one of {list(GRAD_SAMPLE_MODES)}")
    if noise_multiplier < 0 or max_grad_norm <= 0 or expected_batch_size < 1:
        raise ConfigError(f"DP-SGD needs noise_multiplier >= 0, max_grad_norm > 0 and an expected batch "
                          f"size >= 1; got {noise_multiplier}, {max_grad_norm}, {expected_batch_size}")
    if not phase.trainable:
        raise ConfigError(f"phase {phase.name!r} trains no group: nothing to train under DP")
    set_trainable(model, phase, loss_cfg)
    online = nn.ModuleDict({name: getattr(model, name) for name in phase.trainable})
    online.train()
    device = next(model.parameters()).device
    if mode == "ghost":
        hooks: GradSampleHooks = GradSampleHooksFastGradientClipping(
            online, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        opt_cls: type[DPOptimizer] = DPOptimizerFastGradientClipping
    else:
        hooks = GradSampleHooks(online, loss_reduction="mean", force_functorch=mode == "functorch")
        opt_cls = DPOptimizer
    dp_opt = opt_cls(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                     expected_batch_size=expected_batch_size, loss_reduction="mean",
                     generator=_noise_generator(device))
    try:
        yield OpacusHook(hooks, dp_opt, mode), dp_opt
    finally:
        hooks.remove_hooks()
        for p in online.parameters():
            for attr in ("grad_sample", "summed_grad", "_forward_counter", "_norm_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
        for m in online.modules():
            for attr in ("activations", "max_batch_len"):
                if attr in m.__dict__:
                    delattr(m, attr)
