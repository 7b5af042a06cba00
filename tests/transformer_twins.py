"""Adaptors that put the transformer/diffusion layers into the one-input spec table, and the
DyT paper's own module as the twin of normkit's DyT."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PaperDyT(nn.Module):
    """DyT as printed in Zhu et al. 2025 (arXiv:2503.10622, Algorithm 1), the oracle twin."""

    def __init__(self, num_features: int, alpha_init_value: float = 0.5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * alpha_init_value)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.alpha * x)
        return x * self.weight + self.bias


class WithCond(nn.Module):
    """``module(x, cond)`` with a fixed conditioning buffer (one row per sample), so that the
    conditional layers run through the one-input equivalence suite. AdaLNZero's five outputs
    are folded into one tensor so that every parameter gets a gradient."""

    def __init__(self, module: nn.Module, batch: int, cond_dim: int, labels: int = 0) -> None:
        super().__init__()
        self.module = module
        g = torch.Generator().manual_seed(11)
        if labels:
            cond = torch.randint(0, labels, (batch,), generator=g)
        else:
            cond = torch.randn(batch, cond_dim, generator=g, dtype=torch.float64).float()
        self.register_buffer("cond", cond)

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x, self.cond)
        if isinstance(out, tuple):
            y, *rest = out
            return y + sum(rest)[:, None].to(y.dtype)
        return out


class QKPair(nn.Module):
    """QKNorm on (x, reversed x), outputs concatenated along the last dim."""

    def __init__(self, qk: nn.Module) -> None:
        super().__init__()
        self.qk = qk

    def forward(self, x: Tensor) -> Tensor:
        q, k = self.qk(x, x.flip(-1))
        return torch.cat([q, k], dim=-1)
