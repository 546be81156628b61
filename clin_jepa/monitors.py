"""Collapse and drift monitors, computed every N steps on the current batch (batch statistics are fine
here: monitors never feed gradients)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def embedding_monitors(z: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Std per latent dimension over the batch's valid hours (mean and min) and the effective rank.

    Effective rank = exp(entropy of the normalized singular values of the centred latents); it is ``D``
    for isotropic latents and 1 when every latent lies on one line (collapse).
    """
    rows = z[mask].float()
    if rows.shape[0] < 2:
        return {"emb_std_mean": float("nan"), "emb_std_min": float("nan"), "eff_rank": float("nan")}
    std = rows.std(dim=0)
    s = torch.linalg.svdvals(rows - rows.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"emb_std_mean": float(std.mean()), "emb_std_min": float(std.min()),
            "eff_rank": float(torch.exp(entropy))}


@torch.no_grad()
def parameter_drift(online: nn.Module, target: nn.Module) -> float:
    """Mean |θ_E − θ_Ē| over all parameter entries (0 right after a hard sync)."""
    total, count = 0.0, 0
    for po, pt in zip(online.parameters(), target.parameters(), strict=True):
        total += float((po.detach().float() - pt.float()).abs().sum())
        count += po.numel()
    return total / max(1, count)
