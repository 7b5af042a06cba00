"""Frozen batch norm for fine-tuning: ``FrozenBatchNorm`` and ``FrozenBatchNorm1d/2d/3d``.

:func:`normkit.nn.freeze_batchnorm` puts them in place of a model's batch norms."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from normkit import functional as NF
from normkit._checks import check_positive
from normkit.nn._base import _backend_repr, check_rank
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d"]


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine map: always the eval-mode formula.

    .. math:: y = \\frac{x - \\mu_{run}}{\\sqrt{\\sigma^2_{run} + \\epsilon}} \\gamma + \\beta

    For fine-tuning with small batches (detection, segmentation): ``train()`` changes nothing,
    no batch statistics are computed and ``running_mean``/``running_var`` never move or get
    gradients. ``requires_grad=False`` (default) stores ``weight``/``bias`` as buffers, like
    ``torchvision.ops.FrozenBatchNorm2d`` (same state_dict keys); ``requires_grad=True`` keeps
    them as trainable parameters (fine-tune the affine map only). A BatchNorm state_dict loads
    (its ``num_batches_tracked`` is dropped). Gradients flow to the input.

    Shape: ``(N, C, *)`` with ``axis=1``; ``(N, *, C)`` with ``axis=-1``.

    >>> fbn = FrozenBatchNorm2d(64)
    >>> fbn.load_state_dict(torch.nn.BatchNorm2d(64).state_dict())
    <All keys matched successfully>
    >>> y = fbn(torch.randn(1, 64, 8, 8))          # batch size 1 is fine
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    _min_ndim = 2
    _max_ndim: int | None = None
    _unfrozen_cls: type[BatchNorm] = BatchNorm

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        requires_grad: bool = False,
        axis: int = 1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive(type(self).__name__, num_features=num_features)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.axis = axis
        self.backend = backend
        self.requires_grad = requires_grad
        weight, bias = torch.ones(num_features, **factory), torch.zeros(num_features, **factory)
        if requires_grad:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, *, requires_grad: bool = False) -> FrozenBatchNorm:
        """A frozen copy of a batch-norm layer (torch.nn or normkit; weights and stats kept)."""
        rm, rv = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
        if rm is None or rv is None:
            raise ValueError(
                f"cannot freeze {type(bn).__name__}: it has no running statistics "
                "(track_running_stats=False); freeze a layer trained with running statistics"
            )
        if is_lazy(rm):
            raise ValueError(
                f"cannot freeze {type(bn).__name__}: the lazy layer has not seen an input yet, "
                "so it has no statistics; run the model on a batch first"
            )
        frozen = cls(
            rm.shape[0],
            float(getattr(bn, "eps", getattr(bn, "epsilon", 1e-5))),
            device=rm.device,
            dtype=rm.dtype,
            requires_grad=requires_grad,
            axis=int(getattr(bn, "axis", 1)),
            backend=getattr(bn, "backend", "auto"),
        )
        with torch.no_grad():
            frozen.running_mean.copy_(rm)
            frozen.running_var.copy_(rv)
            weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
            if weight is not None:
                frozen.weight.copy_(weight)
            if bias is not None:
                frozen.bias.copy_(bias)
        return frozen

    def to_batchnorm(self) -> nn.Module:
        """A trainable batch norm with this layer's weights and statistics.

        The layer :func:`freeze_batchnorm` replaced, when this one came from there (its class,
        options and ``num_batches_tracked`` come back); otherwise a normkit ``BatchNorm*``.
        """
        bn = self.__dict__.get("_source_module")
        if bn is None:
            bn = self._build_unfrozen()
        rm = self.running_mean
        bn = bn.to(device=rm.device, dtype=rm.dtype)
        with torch.no_grad():
            for name in ("running_mean", "running_var", "weight", "bias"):
                target = getattr(bn, name, None)
                if target is not None:
                    target.copy_(getattr(self, name))
        bn.train(self.training)
        return bn

    def _build_unfrozen(self) -> nn.Module:
        kw: dict[str, Any] = {"axis": self.axis} if self.axis != 1 else {}
        rm = self.running_mean
        return self._unfrozen_cls(
            self.num_features, self.eps, device=rm.device, dtype=rm.dtype, **kw
        )

    def forward(self, input: Tensor) -> Tensor:
        check_rank(self, input)
        return NF.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            False,
            0.0,
            self.eps,
            axis=self.axis,
            backend=self.backend,
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], *args: Any
    ) -> None:
        # A BatchNorm checkpoint carries num_batches_tracked; frozen statistics do not need it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}"
        if self.requires_grad:
            s += ", requires_grad=True"
        if self.axis != 1:
            s += f", axis={self.axis}"
        return s + _backend_repr(self.backend)


class FrozenBatchNorm1d(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` over ``(N, C)`` or ``(N, C, L)`` inputs.

    >>> y = FrozenBatchNorm1d(8)(torch.randn(1, 8))
    """

    _min_ndim, _max_ndim = 2, 3
    _unfrozen_cls = BatchNorm1d


class FrozenBatchNorm2d(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` over ``(N, C, H, W)``; twin of ``torchvision.ops.FrozenBatchNorm2d``.

    >>> y = FrozenBatchNorm2d(8)(torch.randn(1, 8, 4, 4))
    """

    _min_ndim, _max_ndim = 4, 4
    _unfrozen_cls = BatchNorm2d


class FrozenBatchNorm3d(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` over ``(N, C, D, H, W)`` inputs.

    >>> y = FrozenBatchNorm3d(4)(torch.randn(1, 4, 2, 4, 4))
    """

    _min_ndim, _max_ndim = 5, 5
    _unfrozen_cls = BatchNorm3d
