"""normkit layers: drop-in twins of the torch.nn norms, and the norms torch.nn lacks."""

from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.groupnorm import (
    ChannelNorm,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from normkit.nn.layernorm import LayerNorm, LayerNorm2d, RMSNorm
from normkit.nn.registry import get_norm, norm_names, register_norm

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "ChannelNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LayerNorm2d",
    "RMSNorm",
    "get_norm",
    "norm_names",
    "register_norm",
]
