"""``BatchNormalization``: the Keras 3 batch-norm layer, as a PyTorch module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from normkit import functional as NF
from normkit._checks import check_nan_policy
from normkit._stats import NanPolicy

__all__ = ["BatchNormalization"]


class BatchNormalization(LazyModuleMixin, nn.Module):
    """Keras 3's ``keras.layers.BatchNormalization`` in PyTorch: same defaults, same numbers.

    .. math:: y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} \\gamma + \\beta,\\qquad
        \\text{moving} \\leftarrow m\\cdot\\text{moving} + (1 - m)\\cdot\\text{batch}

    Batch norm (Ioffe & Szegedy 2015, arXiv:1502.03167) with the Keras conventions, side by side
    with torch.nn's:

    ==================  =====================================  ==================================
    option              Keras / this layer                     torch.nn.BatchNorm*
    ==================  =====================================  ==================================
    feature axis        ``axis=-1`` (channels last)            dim 1 (channels first)
    momentum            ``0.99`` = weight of the *old* value   ``0.1`` = weight of the *new* batch
    epsilon             ``1e-3``                               ``eps=1e-5``
    moving variance     biased batch variance                  unbiased (``n/(n−1)``)
    affine switches     ``center`` (β), ``scale`` (γ)          ``affine`` (both)
    feature count       inferred from the first input          ``num_features`` required
    ==================  =====================================  ==================================

    so ``momentum_keras = 1 − momentum_torch``. The parameters and buffers use torch names:
    ``weight`` = gamma, ``bias`` = beta, ``running_mean`` = moving_mean, ``running_var`` =
    moving_variance; :meth:`keras_weights` / :meth:`set_keras_weights` move weights in Keras'
    ``get_weights()`` order. ``forward(x, mask=None)`` takes Keras' mask (one dim less than the
    input: padded positions stay out of the statistics). ``train()``/``eval()`` play the role of
    Keras' ``training=`` argument. ``nan_policy`` protects the moving statistics (default
    ``"skip"``; see :class:`normkit.nn.BatchNorm`).

    Shape: any ``(N, ..., C, ...)`` with the features on ``axis``. Output: same.

    >>> bn = BatchNormalization()                # Keras defaults, lazy feature count
    >>> y = bn(torch.randn(32, 10, 64))          # (batch, time, features); now num_features == 64
    """

    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor
    running_var: Tensor

    cls_to_become = None

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        *,
        num_features: int | None = None,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"momentum must be in [0, 1] (got {momentum}); Keras' momentum is the weight of "
                "the old moving value, i.e. 1 - torch's momentum (0.99 ≈ torch's 0.01)"
            )
        if num_features is not None and num_features < 1:
            raise ValueError(f"num_features must be a positive int or None (got {num_features})")
        check_nan_policy(nan_policy)
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.nan_policy: NanPolicy = nan_policy
        self.backend = backend
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        c = num_features

        def param(fill: float) -> nn.Parameter:
            if c is None:
                # a Parameter subclass at runtime; torch's stub declares it a plain Tensor
                return cast(nn.Parameter, UninitializedParameter(**factory))
            return nn.Parameter(torch.full((c,), fill, **factory))

        self.register_parameter("weight", param(1.0) if scale else None)
        self.register_parameter("bias", param(0.0) if center else None)
        for name, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            buf = UninitializedBuffer(**factory) if c is None else torch.full((c,), fill, **factory)
            self.register_buffer(name, buf)

    @property
    def eps(self) -> float:
        """``epsilon`` under torch's name."""
        return self.epsilon

    @property
    def num_features(self) -> int | None:
        """The feature count, or ``None`` before the first input."""
        rm = self.running_mean
        return None if isinstance(rm, UninitializedBuffer) else int(rm.shape[0])

    def reset_parameters(self) -> None:
        """gamma = 1, beta = 0, moving mean = 0, moving variance = 1 (Keras' initializers)."""
        if self.has_uninitialized_params():
            return
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1)
            if self.bias is not None:
                self.bias.zero_()
            self.running_mean.zero_()
            self.running_var.fill_(1)

    def initialize_parameters(self, input: Tensor, mask: Tensor | None = None) -> None:
        """Materialize the lazy parameters from the first input's feature count."""
        if not self.has_uninitialized_params():
            return
        if not -input.ndim <= self.axis < input.ndim:
            raise ValueError(
                f"BatchNormalization(axis={self.axis}) got input of shape {tuple(input.shape)} "
                "without that axis; pass the feature axis of your layout"
            )
        c = int(input.shape[self.axis])
        with torch.no_grad():
            for p in (self.weight, self.bias, self.running_mean, self.running_var):
                if p is not None:
                    cast("UninitializedParameter | UninitializedBuffer", p).materialize((c,))
            self.reset_parameters()

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        c = self.num_features
        if not -input.ndim <= self.axis < input.ndim or input.shape[self.axis] != c:
            raise ValueError(
                f"BatchNormalization expects {c} features on axis {self.axis} (got input of shape "
                f"{tuple(input.shape)}); the feature count was fixed by the first input"
            )
        if mask is not None and mask.ndim != input.ndim - 1:
            raise ValueError(
                f"BatchNormalization: the mask must have one dim less than the input, as in Keras "
                f"(got mask of shape {tuple(mask.shape)} for input {tuple(input.shape)})"
            )
        return NF.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.epsilon,
            axis=self.axis,
            momentum_convention="keras",
            nan_policy=self.nan_policy,
            mask=mask,
            backend=self.backend,
        )

    def keras_weights(self) -> list[np.ndarray]:
        """Weights in the order of Keras' ``layer.get_weights()``: gamma (if ``scale``), beta
        (if ``center``), moving_mean, moving_variance."""
        tensors = [self.weight, self.bias, self.running_mean, self.running_var]
        return [t.detach().cpu().numpy().copy() for t in tensors if t is not None]

    def set_keras_weights(self, weights: Sequence[Any]) -> None:
        """Load weights from Keras' ``layer.get_weights()`` order (see :meth:`keras_weights`);
        materializes a lazy layer."""
        targets = [n for n in ("weight", "bias") if getattr(self, n) is not None]
        targets += ["running_mean", "running_var"]
        if len(weights) != len(targets):
            raise ValueError(
                f"expected {len(targets)} arrays ({', '.join(targets)}) in Keras order (got "
                f"{len(weights)}); check center/scale match the Keras layer"
            )
        arrays = [torch.as_tensor(np.asarray(w)) for w in weights]
        if self.has_uninitialized_params():
            shape = tuple(arrays[-1].shape)
            for n in targets:
                getattr(self, n).materialize(shape)
        with torch.no_grad():
            for n, a in zip(targets, arrays, strict=True):
                getattr(self, n).copy_(a)

    def extra_repr(self) -> str:
        return (
            f"axis={self.axis}, momentum={self.momentum}, epsilon={self.epsilon}, "
            f"center={self.center}, scale={self.scale}, num_features={self.num_features}"
        )
