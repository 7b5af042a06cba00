"""What kind of layer a module is (norms by :mod:`normkit.nn.catalog`; works for torch.nn,
normkit, timm and user layers)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from normkit.nn import catalog

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


def is_bn_like(m: nn.Module) -> bool:
    """A batch-norm-style layer (batch statistics in training, running statistics in eval):
    the ``"batch"`` family of :func:`normkit.nn.catalog.family` — torch.nn.BatchNorm*,
    SyncBatchNorm, normkit's batch norms, and any layer following torch's conventions
    (``running_mean``, ``running_var``, ``momentum``, ``num_batches_tracked``).

    >>> is_bn_like(nn.BatchNorm2d(8)), is_bn_like(nn.LayerNorm(8))
    (True, False)
    """
    return catalog.family(m) == "batch"


def is_norm_like(m: nn.Module) -> bool:
    """Any normalization layer (:func:`normkit.nn.catalog.is_norm`): the catalog's norms, layers
    following torch's batch-norm conventions, and classes whose name contains "norm".

    >>> is_norm_like(nn.LayerNorm(8)), is_norm_like(nn.Linear(8, 8))
    (True, False)
    """
    return catalog.is_norm(m)


def norm_kind(m: nn.Module) -> Literal["batch", "norm"] | None:
    """``"batch"`` for BN-like layers (see :func:`is_bn_like`), ``"norm"`` for the other
    normalization layers, None for anything else."""
    if is_bn_like(m):
        return "batch"
    return "norm" if is_norm_like(m) else None


def is_depth_layer(m: nn.Module) -> bool:
    """A layer that carries depth: a conv/linear-like module with a weight of rank ≥ 2 that is
    not a normalization layer. Vanishing/exploding gradients are measured across these.

    >>> is_depth_layer(nn.Conv2d(3, 8, 3)), is_depth_layer(nn.BatchNorm2d(8))
    (True, False)
    """
    w = getattr(m, "weight", None)
    return isinstance(w, nn.Parameter) and w.ndim >= 2 and not is_norm_like(m)


def activation_kind(m: nn.Module) -> ActivationKind | None:
    """``"relu"`` for ReLU/ReLU6 (units can die), ``"sigmoid"``/``"tanh"`` for the saturating
    ones (Sigmoid, Tanh, Hardsigmoid, Hardtanh), ``None`` otherwise.

    >>> activation_kind(nn.ReLU()), activation_kind(nn.Tanh()), activation_kind(nn.GELU())
    ('relu', 'tanh', None)
    """
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
