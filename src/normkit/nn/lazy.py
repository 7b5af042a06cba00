"""Lazy layers: ``LazyBatchNorm1d/2d/3d`` and ``LazyInstanceNorm1d/2d/3d``, whose feature count
comes from the first input (torch's ``LazyModuleMixin``)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from normkit._stats import NanPolicy
from normkit.nn._base import NormBase
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.groupnorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, _InstanceNorm

__all__ = [
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
]


class _LazyNorm(LazyModuleMixin, NormBase):
    """torch's ``_LazyNormBase`` for normkit's layers: built with no features, then
    ``weight``/``bias``/``running_mean``/``running_var`` materialized from the first input,
    after which the module becomes its ``cls_to_become`` (e.g. :class:`BatchNorm2d`)."""

    def _lazy(self) -> bool:
        return True

    def _make_lazy(
        self, affine: bool, track_running_stats: bool, bias: bool, factory: dict[str, Any]
    ) -> None:
        """Replace the empty state of ``num_features=0`` by uninitialized tensors."""
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = UninitializedParameter(**factory)
            if bias:
                self.bias = UninitializedParameter(**factory)
        if track_running_stats:
            self.running_mean = UninitializedBuffer(**factory)
            self.running_var = UninitializedBuffer(**factory)
            self.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=factory["device"])

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.num_features != 0:
            super().reset_parameters()

    def _feature_dim(self, input: Tensor) -> int:
        return 1

    def initialize_parameters(self, input: Tensor, *args: Any, **kwargs: Any) -> None:
        """Take ``num_features`` from the first input (or from a loaded state_dict)."""
        loaded = next((t for t in (self.weight, self.running_mean) if t is not None), None)
        if loaded is not None and not self.has_uninitialized_params():
            self.num_features = int(loaded.shape[0])
            return
        dim = self._feature_dim(input)
        if not -input.ndim <= dim < input.ndim:
            raise ValueError(
                f"{type(self).__name__} cannot take its feature count from an input of shape "
                f"{tuple(input.shape)} (no dim {dim}); pass an input of the layer's rank"
            )
        self.num_features = int(input.shape[dim])
        with torch.no_grad():
            for t in (self.weight, self.bias, self.running_mean, self.running_var):
                if t is not None:
                    cast("UninitializedParameter | UninitializedBuffer", t).materialize(
                        (self.num_features,)
                    )
            self.reset_parameters()


class _LazyBatchNorm(_LazyNorm, BatchNorm):
    def __init__(
        self,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        axis: int = 1,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(
            0,
            eps,
            momentum,
            False,
            False,
            **factory,
            axis=axis,
            nan_policy=nan_policy,
            backend=backend,
        )
        self._make_lazy(affine, track_running_stats, bias, factory)

    def _feature_dim(self, input: Tensor) -> int:
        return self.axis


class _LazyInstanceNorm(_LazyNorm, _InstanceNorm):
    def __init__(
        self,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(
            0, eps, momentum, False, False, **factory, nan_policy=nan_policy, backend=backend
        )
        self._make_lazy(affine, track_running_stats, bias, factory)

    def _feature_dim(self, input: Tensor) -> int:
        return 0 if input.ndim == self._spatial_dims + 1 else 1  # unbatched (C, *) or (N, C, *)


class LazyBatchNorm1d(_LazyBatchNorm, BatchNorm1d):
    """:class:`BatchNorm1d` whose ``num_features`` comes from the first input; twin of
    :class:`torch.nn.LazyBatchNorm1d` (same constructor, becomes :class:`BatchNorm1d`).

    >>> bn = LazyBatchNorm1d()
    >>> y = bn(torch.randn(8, 16))
    >>> type(bn).__name__, bn.num_features
    ('BatchNorm1d', 16)
    """

    cls_to_become = BatchNorm1d


class LazyBatchNorm2d(_LazyBatchNorm, BatchNorm2d):
    """:class:`BatchNorm2d` whose ``num_features`` comes from the first input; twin of
    :class:`torch.nn.LazyBatchNorm2d`.

    >>> y = LazyBatchNorm2d()(torch.randn(8, 16, 4, 4))
    """

    cls_to_become = BatchNorm2d


class LazyBatchNorm3d(_LazyBatchNorm, BatchNorm3d):
    """:class:`BatchNorm3d` whose ``num_features`` comes from the first input; twin of
    :class:`torch.nn.LazyBatchNorm3d`.

    >>> y = LazyBatchNorm3d()(torch.randn(2, 4, 3, 4, 4))
    """

    cls_to_become = BatchNorm3d


class LazyInstanceNorm1d(_LazyInstanceNorm, InstanceNorm1d):
    """:class:`InstanceNorm1d` whose ``num_features`` comes from the first input; twin of
    :class:`torch.nn.LazyInstanceNorm1d` (torch's defaults: ``affine=True``,
    ``track_running_stats=True``).

    >>> y = LazyInstanceNorm1d()(torch.randn(4, 8, 100))
    """

    cls_to_become = InstanceNorm1d


class LazyInstanceNorm2d(_LazyInstanceNorm, InstanceNorm2d):
    """:class:`InstanceNorm2d` whose ``num_features`` comes from the first input; twin of
    :class:`torch.nn.LazyInstanceNorm2d`.

    >>> y = LazyInstanceNorm2d()(torch.randn(4, 3, 16, 16))
    """

    cls_to_become = InstanceNorm2d


class LazyInstanceNorm3d(_LazyInstanceNorm, InstanceNorm3d):
    """:class:`InstanceNorm3d` whose ``num_features`` comes from the first input; twin of
    :class:`torch.nn.LazyInstanceNorm3d`.

    >>> y = LazyInstanceNorm3d()(torch.randn(1, 2, 4, 8, 8))
    """

    cls_to_become = InstanceNorm3d
