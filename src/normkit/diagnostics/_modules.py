"""What kind of layer a module is, by duck typing (works for torch.nn, normkit and user layers)."""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = [
    "SAT_HIGH",
    "SAT_LOW",
    "ActivationKind",
    "activation_kind",
    "is_bn_like",
    "is_depth_layer",
    "is_norm_like",
    "leaf_modules",
    "norm_kind",
]

ActivationKind = Literal["relu", "sigmoid", "tanh"]

#: A sigmoid output is saturated outside [SAT_LOW, SAT_HIGH], a tanh output when |y| > SAT_HIGH.
SAT_LOW, SAT_HIGH = 0.01, 0.99

_BN_ATTRS = ("running_mean", "running_var", "momentum", "num_batches_tracked")


def is_bn_like(m: nn.Module) -> bool:
    """A batch-norm-style layer: has ``running_mean``, ``running_var``, ``momentum`` and
    ``num_batches_tracked`` (torch.nn.BatchNorm*, SyncBatchNorm, normkit.nn.BatchNorm* and any
    layer following the same conventions)."""
    return all(hasattr(m, a) for a in _BN_ATTRS)


def is_norm_like(m: nn.Module) -> bool:
    """Any normalization layer: BN-like, or a class whose name contains "norm" (LayerNorm,
    GroupNorm, RMSNorm, InstanceNorm, BatchRenorm, ...)."""
    return is_bn_like(m) or "norm" in type(m).__name__.lower()


def norm_kind(m: nn.Module) -> Literal["batch", "norm"] | None:
    """``"batch"`` for BN-like layers (see :func:`is_bn_like`), ``"norm"`` for the other
    normalization layers, None for anything else."""
    if is_bn_like(m):
        return "batch"
    return "norm" if is_norm_like(m) else None


def is_depth_layer(m: nn.Module) -> bool:
    """A layer that carries depth: a conv/linear-like module with a weight of rank ≥ 2 that is
    not a normalization layer. Vanishing/exploding gradients are measured across these."""
    w = getattr(m, "weight", None)
    return isinstance(w, nn.Parameter) and w.ndim >= 2 and not is_norm_like(m)


def activation_kind(m: nn.Module) -> ActivationKind | None:
    """``"relu"`` for ReLU/ReLU6 (units can die), ``"sigmoid"``/``"tanh"`` for the saturating
    ones (Sigmoid, Tanh, Hardsigmoid, Hardtanh), ``None`` otherwise."""
    if isinstance(m, (nn.ReLU, nn.ReLU6)):
        return "relu"
    if isinstance(m, (nn.Sigmoid, nn.Hardsigmoid)):
        return "sigmoid"
    if isinstance(m, (nn.Tanh, nn.Hardtanh)) and not isinstance(m, nn.ReLU6):
        return "tanh"
    return None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every module without children (the model itself when it
    has none), in registration order."""
    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    return leaves or [("", model)]
