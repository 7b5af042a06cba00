"""Frozen batch norm for fine-tuning: ``FrozenBatchNorm*`` and ``freeze_batchnorm``/``unfreeze_batchnorm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normkit import functional as NF
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.registry import register_norm

__all__ = [
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "freeze_batchnorm",
    "unfreeze_batchnorm",
]


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
        if num_features < 1:
            raise ValueError(f"num_features must be a positive int (got {num_features})")
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
            if getattr(bn, "weight", None) is not None:
                frozen.weight.copy_(bn.weight)
            if getattr(bn, "bias", None) is not None:
                frozen.bias.copy_(bn.bias)
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

    def _check_input_dim(self, x: Tensor) -> None:
        name = type(self).__name__
        if x.ndim < self._min_ndim or (self._max_ndim is not None and x.ndim > self._max_ndim):
            raise ValueError(
                f"{name} expects {self._min_ndim}D to {self._max_ndim or 'any'}D input (got "
                f"{x.ndim}D input of shape {tuple(x.shape)}); use the variant matching your "
                "input rank, or FrozenBatchNorm"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
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
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A BatchNorm checkpoint carries num_batches_tracked; frozen statistics do not need it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}"
        if self.requires_grad:
            s += ", requires_grad=True"
        if self.axis != 1:
            s += f", axis={self.axis}"
        return s


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


# Which frozen class stands in for which batch-norm class (checked along the MRO, so subclasses
# such as BatchRenorm2d map too). Modules with extra behaviour (an activation) register theirs.
FROZEN_TWINS: dict[type[nn.Module], type[FrozenBatchNorm]] = {
    nn.BatchNorm1d: FrozenBatchNorm1d,
    nn.BatchNorm2d: FrozenBatchNorm2d,
    nn.BatchNorm3d: FrozenBatchNorm3d,
    BatchNorm1d: FrozenBatchNorm1d,
    BatchNorm2d: FrozenBatchNorm2d,
    BatchNorm3d: FrozenBatchNorm3d,
}


def _is_batchnorm(m: nn.Module) -> bool:
    if isinstance(m, FrozenBatchNorm):
        return False
    return isinstance(m, _BatchNorm | BatchNorm) or getattr(m, "is_batchnorm", False)


def _frozen_class(m: nn.Module) -> type[FrozenBatchNorm]:
    for klass in type(m).__mro__:
        if klass in FROZEN_TWINS:
            return FROZEN_TWINS[klass]
    return FrozenBatchNorm


def freeze_batchnorm(model: nn.Module, *, requires_grad: bool = False) -> nn.Module:
    """Replace every batch-norm layer of ``model`` by a :class:`FrozenBatchNorm` (in place).

    Converts ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm`` and every normkit batch
    norm (``BatchNorm*``, ``BatchRenorm*``, ``GhostBatchNorm*``, ``SyncBatchNorm``,
    ``BatchNormAct2d`` → ``FrozenBatchNormAct2d``, Keras-style ``BatchNormalization``), keeping
    weights and running statistics, so the model behaves as in eval mode in every mode.
    ``requires_grad=True`` leaves the affine ``weight``/``bias`` trainable. Returns ``model``
    (or the frozen layer when ``model`` itself is a batch norm). :func:`unfreeze_batchnorm`
    undoes it. A batch norm without running statistics raises :class:`ValueError`.

    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> model = freeze_batchnorm(model)
    >>> type(model[1]).__name__
    'FrozenBatchNorm2d'
    """
    if _is_batchnorm(model):
        frozen = _frozen_class(model).from_batchnorm(model, requires_grad=requires_grad)
        frozen.train(model.training)
        frozen.__dict__["_source_module"] = model  # not a submodule: kept out of state_dict
        return frozen
    for name, child in model.named_children():
        new = freeze_batchnorm(child, requires_grad=requires_grad)
        if new is not child:
            setattr(model, name, new)
    return model


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_batchnorm`: every frozen layer becomes a trainable batch norm again.

    A layer frozen by :func:`freeze_batchnorm` gets its original class and options back (with
    ``num_batches_tracked``); one built directly becomes a normkit ``BatchNorm*`` of the same
    rank (see :meth:`FrozenBatchNorm.to_batchnorm`). Current weights and statistics are kept.
    Returns ``model`` (or the new layer).

    >>> model = unfreeze_batchnorm(freeze_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(4))))
    >>> type(model[0]).__name__
    'BatchNorm1d'
    """
    if isinstance(model, FrozenBatchNorm):
        return model.to_batchnorm()
    for name, child in model.named_children():
        new = unfreeze_batchnorm(child)
        if new is not child:
            setattr(model, name, new)
    return model


register_norm("frozenbn", FrozenBatchNorm, aliases=("frozenbatchnorm",))
register_norm("frozenbn1d", FrozenBatchNorm1d, aliases=("frozenbatchnorm1d",))
register_norm("frozenbn2d", FrozenBatchNorm2d, aliases=("frozenbatchnorm2d",))
register_norm("frozenbn3d", FrozenBatchNorm3d, aliases=("frozenbatchnorm3d",))
