"""Shared transformer layers, built only from modules Opacus computes per-sample gradients for.

Only ``nn.Linear``, ``nn.LayerNorm`` and ``nn.Embedding`` hold parameters; attention is the functional
``scaled_dot_product_attention`` (no ``nn.MultiheadAttention``, no BatchNorm), so
``opacus.validators.ModuleValidator.validate(module, strict=True)`` finds nothing to fix.
Every input is batch-first, including positions (a contiguous ``(B, T)`` tensor), because Opacus'
per-sample hooks index the first dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # Hour t sees hours <= t only. Padding hours sit after the stay (masks are prefixes), so the causal
        # mask alone keeps them out of every real hour's context.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_heads)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp_ratio * d)
        self.fc2 = nn.Linear(mlp_ratio * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CausalTransformer(nn.Module):
    """Optional learned hour positions + causal blocks + final LayerNorm; (B,T,d), (B,T) -> (B,T,d).

    Without positions (``max_len=0``) the order of hours still reaches the network through the causal
    mask, but no absolute hour index does.
    """

    def __init__(self, d: int, n_layers: int, n_heads: int, mlp_ratio: int, max_len: int) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, d) if max_len > 0 else None
        self.blocks = nn.ModuleList(Block(d, n_heads, mlp_ratio) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)
