"""torch.nn oracles for the training-time family rows of the spec table (tests/specs.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChunkedBatchNorm(nn.Module):
    """GhostBatchNorm's oracle: torch.nn.BatchNorm applied to each block of ``v`` samples in turn
    (training); plain eval BN otherwise."""

    def __init__(self, bn: nn.Module, v: int) -> None:
        super().__init__()
        self.bn, self.v = bn, v

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.bn(x)
        return torch.cat([self.bn(c) for c in x.split(self.v)])


class EvalBatchNorm2d(nn.BatchNorm2d):
    """FrozenBatchNorm's oracle: torch.nn.BatchNorm2d that always uses its running statistics."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
