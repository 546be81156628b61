"""FLOPs of one training step, counted two ways, for throughput and model-FLOP-utilization figures.

* :func:`measured_step_flops` runs one real forward + backward of ``train_steps``' objective under
  ``torch.utils.flop_counter.FlopCounterMode`` (it counts matmuls, and attention on CUDA only; never
  element-wise ops);
* :func:`analytic_step_flops` is the closed form: ``2 x matmul params x tokens`` per forward pass plus
  the attention term ``4 x T^2 x width`` per layer and sequence, backward twice the forward of what
  carries gradients.

Passes per step (``clin_jepa.train.train_steps`` with ``LossConfig.rollout_steps = k``): one target
forward through ``Ē``, one context forward through ``E`` (plus its backward when the phase trains ``E``),
and ``k`` predictor passes with their backward (``P`` always trains, and the rollout's later passes read
the earlier ones' outputs, so gradients flow through all of them), one more per look-ahead horizon, and
the observation head once. Embedding look-ups, LayerNorm and the
optimizer are left out: they are a few percent of the step at the presets' widths.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clin_jepa.curriculum import Phase
from clin_jepa.losses import LossConfig, jepa_loss, layer_normed_targets, model_terms
from clin_jepa.models import ClinJEPA, ModelConfig

# Dense bf16 tensor-core peak of the GPUs this project's `base` preset is sized for (NVIDIA datasheets,
# SXM parts, without sparsity), for model FLOP utilization = achieved / peak.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def matmul_params(module: nn.Module) -> int:
    """Weights that multiply activations: every ``nn.Linear`` weight (embeddings are look-ups)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def _attention_flops(batch: int, hours: int, width: int, layers: int) -> int:
    # Q K^T and attention x V: two (T x T x width) matmul products per sequence and layer, counted in full
    # (as FlopCounterMode does) although the causal mask makes half of them zero.
    return layers * 4 * batch * hours * hours * width


def analytic_step_flops(cfg: ModelConfig, batch: int, hours: int, trains_encoder: bool,
                        rollout_steps: int = 2, attention: bool = True, look_ahead: bool = True) -> int:
    """Closed-form FLOPs of one training step (see the module docstring for which passes count).

    ``P`` runs ``rollout_steps`` passes plus one per look-ahead horizon (``look_ahead``: the loss's
    ``horizon_weight`` > 0; with ``horizon_heads`` their output layer instead); its observation head
    reads ``z`` once.

    ``attention=False`` leaves out the attention term: FlopCounterMode counts CPU attention as zero
    (torch 2.13 registers no formula for the CPU flash kernel), so that is the figure to compare it with
    on CPU. On CUDA it counts the flash/efficient kernels.
    """
    scale = 1 if attention else 0
    tokens = batch * hours
    with torch.device("meta"):  # only the sizes are needed: no memory, no initialization
        model = ClinJEPA(cfg)
    enc = 2 * matmul_params(model.encoder) * tokens + scale * _attention_flops(
        batch, hours, cfg.d_enc, cfg.enc_layers)
    head = matmul_params(model.predictor.obs_head) if model.predictor.obs_head is not None else 0
    ahead = matmul_params(model.predictor.ahead) if model.predictor.ahead is not None else 0
    pred = 2 * (matmul_params(model.predictor) - head - ahead) * tokens + scale * _attention_flops(
        batch, hours, cfg.d_pred, cfg.pred_layers)
    # horizon heads read the look-aheads off the next-hour pass: one more output layer, not more passes
    passes = rollout_steps + (len(cfg.horizons) if look_ahead and not ahead else 0)
    ahead_cost = 3 * 2 * ahead * tokens if look_ahead else 0
    context = 3 * enc if trains_encoder else enc
    # the head's input gradient is only needed when it flows on into a trained E
    head_cost = (3 if trains_encoder else 2) * 2 * head * tokens
    return enc + context + 3 * passes * pred + head_cost + ahead_cost


def measured_step_flops(model: ClinJEPA, batch: dict[str, torch.Tensor], phase: Phase,
                        loss_cfg: LossConfig | None = None) -> int:
    """FLOPs FlopCounterMode sees in one forward + backward of the training objective on ``batch``.

    Gradients are computed into the parameters and then dropped, so the model is left as it was.
    """
    loss_cfg = loss_cfg or LossConfig()
    model.encoder.requires_grad_(phase.trains_encoder)
    model.predictor.requires_grad_(phase.trains_predictor)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            target = layer_normed_targets(model.target_encoder(batch).float())
        z = model.encoder(batch)
        loss, _ = jepa_loss(model.predictor, z, target, batch, loss_cfg, with_collapse=phase.trains_encoder,
                            **model_terms(model.cfg, batch))
        loss.backward()
    for p in model.parameters():
        p.grad = None
    return int(counter.get_total_flops())


def peak_flops(device: torch.device) -> float | None:
    """The bf16 dense peak of a known CUDA device, else ``None`` (CPUs: no meaningful single figure)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
