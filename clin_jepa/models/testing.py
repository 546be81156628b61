"""Random batches with the shapes and dtypes of ``clin_jepa.data.dataset`` batches (tests, benchmarks)."""

from __future__ import annotations

import torch

from clin_jepa.models.config import ModelConfig


def random_batch(cfg: ModelConfig, batch_size: int, hours: int, seed: int = 0,
                 n_tasks: int = 8) -> dict[str, torch.Tensor]:
    """A batch obeying the data contract: ~30 % of (hour, concept) cells observed, stays of >= half
    the hours (mask is a prefix), ``pos`` contiguous (B, T)."""
    g = torch.Generator().manual_seed(seed)
    b, t = batch_size, hours
    observed = torch.rand(b, t, cfg.n_concepts, generator=g) < 0.3
    bins = torch.randint(1, cfg.n_bins + 1, (b, t, cfg.n_concepts), generator=g) * observed
    lengths = torch.randint(max(2, t // 2), t + 1, (b,), generator=g)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    hour = torch.arange(t, dtype=torch.float32).expand(b, t)
    phase = 2 * torch.pi * ((hour + torch.randint(0, 24, (b, 1), generator=g)) % 24) / 24
    age = torch.rand(b, 1, generator=g) * 0.6 + 0.3
    time = torch.stack([hour / t, torch.sin(phase), torch.cos(phase), age.expand(b, t)], dim=-1)
    return {
        "bins": bins.long(),
        "treat": (torch.rand(b, t, cfg.n_treatments, generator=g) < 0.1).float(),
        "time": time[..., : cfg.n_time].contiguous(),
        "mask": mask,
        "pos": torch.arange(t).expand(b, t).contiguous(),
        "labels": (torch.rand(b, n_tasks, generator=g) < 0.2).float(),
    }
