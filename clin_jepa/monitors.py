"""Collapse and drift monitors, computed every N steps on the current batch (batch statistics are fine
here: monitors never feed gradients)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def embedding_monitors(z: torch.Tensor, mask: torch.Tensor,
                       pos: torch.Tensor | None = None) -> dict[str, float]:
    """Std per latent dimension over the batch's valid hours (mean and min), the effective rank and,
    given the hour index ``pos``, the hour's share of latent variance.

    Effective rank = exp(entropy of the normalized singular values of the centred latents); it is ``D``
    for isotropic latents and 1 when every latent lies on one line (collapse). ``hour_share`` is the
    between-hour sum of squares over the total (an ANOVA R² of the hour index) on layer-normed latents:
    near 1 means the latent mostly tells the clock, not the patient (target < 0.05).
    """
    rows = z[mask].float()
    if rows.shape[0] < 2:
        return {"emb_std_mean": float("nan"), "emb_std_min": float("nan"), "eff_rank": float("nan"),
                "hour_share": float("nan")}
    std = rows.std(dim=0)
    s = torch.linalg.svdvals(rows - rows.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    out = {"emb_std_mean": float(std.mean()), "emb_std_min": float(std.min()),
           "eff_rank": float(torch.exp(entropy))}
    if pos is not None:
        out["hour_share"] = hour_share(z, mask, pos)
    return out


@torch.no_grad()
def hour_share(z: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> float:
    """Share of the variance of layer-normed latents explained by the hour index (between-hour R²)."""
    zn = torch.nn.functional.layer_norm(z[mask].float(), (z.shape[-1],))
    hours = pos[mask]
    centred = zn - zn.mean(dim=0)
    total = float((centred ** 2).sum())
    n_hours = int(hours.max()) + 1
    sums = torch.zeros(n_hours, zn.shape[1], device=zn.device).index_add_(0, hours, centred)
    counts = torch.bincount(hours, minlength=n_hours).clamp_min(1).unsqueeze(1).float()
    between = float(((sums ** 2) / counts).sum())
    return between / total if total > 0 else float("nan")


@torch.no_grad()
def parameter_drift(online: nn.Module, target: nn.Module) -> float:
    """Mean |θ_E − θ_Ē| over all parameter entries (0 right after a hard sync)."""
    total, count = 0.0, 0
    for po, pt in zip(online.parameters(), target.parameters(), strict=True):
        total += float((po.detach().float() - pt.float()).abs().sum())
        count += po.numel()
    return total / max(1, count)
