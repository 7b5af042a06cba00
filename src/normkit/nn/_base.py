"""The base classes of normkit's layers (the role of torch's ``_NormBase``).

A layer holds state only; the math lives in :mod:`normkit.functional`. What every layer shares
is written here once:

- :func:`init_affine` / :func:`reset_affine`: the ``weight`` and ``bias`` parameters of the
  given shape, or ``None`` — torch's registration, ``bias=False`` included — and their reset
  to ones and zeros.
- :class:`NormBase`: per-feature norms with optional running statistics (the batch-norm family
  and the instance norms): torch's constructor ``(num_features, eps, momentum, affine,
  track_running_stats, device, dtype, *, bias)``, the buffers ``running_mean``,
  ``running_var``, ``num_batches_tracked``, ``reset_running_stats``/``reset_parameters``,
  ``extra_repr`` as torch prints it, ``_version = 2`` and the loading of checkpoints saved
  before ``num_batches_tracked`` existed, as torch does.
- :class:`BatchNormBase`: adds the feature ``axis``, the input-rank check and the batch-norm
  prologue of torch's ``_BatchNorm.forward`` (which statistics normalize, which buffers move),
  used by every batch-norm layer (BatchNorm, BatchRenorm, GhostBatchNorm, SyncBatchNorm, the
  norm+activation layers, the lazy layers).
- :class:`ChannelAffineBase`: per-sample norms with a per-channel affine map and no running
  statistics (GroupNorm, ChannelNorm, LayerNorm2d).
- :class:`ActivationMixin`: "this norm, then an activation" for the norm+activation layers.
- :func:`adds_options`: a subclass that only adds keyword-only options writes just those; its
  signature (what ``inspect.signature``, the torch-parity test and the API docs read) is the
  base constructor's with the options appended.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from normkit._checks import check_nan_policy, check_positive
from normkit._stats import NanPolicy

__all__ = [
    "Activation",
    "ActivationMixin",
    "BatchNormBase",
    "ChannelAffineBase",
    "NormBase",
    "adds_options",
    "check_rank",
    "init_affine",
    "make_activation",
    "reset_affine",
]


def init_affine(
    module: nn.Module,
    shape: int | Sequence[int],
    weight: bool,
    bias: bool,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Register ``weight`` and ``bias`` parameters of ``shape`` on ``module`` (uninitialized,
    like torch: the layer's ``reset_parameters`` sets them), each ``None`` when switched off;
    ``bias`` needs ``weight`` (torch's ``affine``/``bias`` rule)."""
    size = (shape,) if isinstance(shape, int) else tuple(shape)
    for name, on in (("weight", weight), ("bias", weight and bias)):
        if on:
            module.register_parameter(
                name, nn.Parameter(torch.empty(size, device=device, dtype=dtype))
            )
        else:
            module.register_parameter(name, None)


_Init = TypeVar("_Init", bound=Callable[..., None])


def adds_options(base: type, **defaults: Any) -> Callable[[_Init], _Init]:
    """Decorate ``__init__(self, *args, <options>, **kwargs)`` of a subclass of ``base`` that
    adds keyword-only ``<options>`` (and may change ``defaults`` of ``base``'s arguments) and
    passes everything else on: the torch arguments are written once, in ``base``.

    The constructor's signature is ``base``'s with ``defaults`` replaced and the options
    appended, so ``inspect.signature`` (the torch-parity test, the API docs) lists every
    argument in order; calls are bound to it, so an argument left out takes this class's
    default and a wrong one is reported under this class's name.

    >>> class Scaled(NormBase):
    ...     @adds_options(NormBase, affine=False)
    ...     def __init__(self, *args: Any, scale: float = 2.0, **kwargs: Any) -> None:
    ...         super().__init__(*args, **kwargs)
    ...         self.scale = scale
    >>> list(inspect.signature(Scaled).parameters)[-4:]
    ['bias', 'nan_policy', 'backend', 'scale']
    >>> Scaled(4).affine, Scaled(4, scale=3.0).scale
    (False, 3.0)
    """

    def decorate(init: _Init) -> _Init:
        this, *own = inspect.signature(init).parameters.values()
        options = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        inherited = inspect.signature(base)  # without self
        unknown = set(defaults) - set(inherited.parameters)
        if unknown:
            raise TypeError(f"{base.__name__} has no argument(s) {sorted(unknown)}")
        params = [
            p.replace(default=defaults.get(p.name, p.default))
            for p in inherited.parameters.values()
        ]
        signature = inherited.replace(parameters=[this, *params, *options])

        @functools.wraps(init)
        def bound_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{type(self).__name__}: {e}") from None
            bound.apply_defaults()
            init(*bound.args, **bound.kwargs)

        bound_init.__signature__ = signature  # type: ignore[attr-defined]
        return cast(_Init, bound_init)

    return decorate


def _backend_repr(backend: str) -> str:
    """``, backend='numba'`` for ``extra_repr``; nothing for the default ``"auto"``."""
    return f", backend={backend!r}" if backend != "auto" else ""


def reset_affine(module: nn.Module) -> None:
    """``weight = 1``, ``bias = 0`` where they exist."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None:
        nn.init.ones_(weight)
    if bias is not None:
        nn.init.zeros_(bias)


def check_rank(module: nn.Module, x: Tensor) -> None:
    """Raise unless ``x.ndim`` lies in ``[module._min_ndim, module._max_ndim]`` (``None``: no
    upper bound), the per-rank classes' input check."""
    lo, hi = cast(int, module._min_ndim), cast("int | None", module._max_ndim)
    if x.ndim < lo or (hi is not None and x.ndim > hi):
        want = f"{lo}D" if lo == hi else f"{lo}D to {hi}D" if hi else f"at least {lo}D"
        raise ValueError(
            f"{type(module).__name__} expects {want} input (got {x.ndim}D input of shape "
            f"{tuple(x.shape)}); use the variant matching your input rank, or the any-rank class "
            "(e.g. normkit.nn.BatchNorm)"
        )


class NormBase(nn.Module):
    """Per-feature norm with optional running statistics: torch's ``_NormBase``.

    ``affine`` adds ``weight`` and (unless ``bias=False``) ``bias`` of shape
    ``(num_features,)``; ``track_running_stats`` adds the buffers ``running_mean`` (zeros),
    ``running_var`` (ones) and ``num_batches_tracked`` (a long zero), else registers them as
    ``None``. Keyword-only extras stored for :mod:`normkit.functional`: ``nan_policy`` and
    ``backend``. Subclasses print their extra options through :meth:`extra_options`.
    """

    _version = 2
    num_features: int
    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(
        self,
        num_features: int,
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
        super().__init__()
        if not self._lazy():
            check_positive(type(self).__name__, num_features=num_features)
        check_nan_policy(nan_policy)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.nan_policy: NanPolicy = nan_policy
        self.backend = backend
        init_affine(self, num_features, affine, bias, device, dtype)
        if track_running_stats:
            self.register_buffer(
                "running_mean", torch.zeros(num_features, device=device, dtype=dtype)
            )
            self.register_buffer(
                "running_var", torch.ones(num_features, device=device, dtype=dtype)
            )
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def _lazy(self) -> bool:
        """Whether the feature count comes from the first input (the ``Lazy*`` layers)."""
        return False

    def reset_running_stats(self) -> None:
        """Zero the running mean, set the running variance to one, reset the batch counter."""
        if self.track_running_stats:
            self.running_mean.zero_()  # type: ignore[union-attr]
            self.running_var.fill_(1)  # type: ignore[union-attr]
            self.num_batches_tracked.zero_()  # type: ignore[union-attr]

    def reset_parameters(self) -> None:
        """Reset the running statistics and set ``weight = 1``, ``bias = 0``."""
        self.reset_running_stats()
        reset_affine(self)

    def extra_options(self) -> str:
        """normkit's options, printed after torch's when they are not the defaults."""
        return _backend_repr(self.backend)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}" + self.extra_options()
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], *args: Any
    ) -> None:
        # Version 2 added num_batches_tracked: an older checkpoint keeps ours (or 0), as torch.
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            nbt = self.num_batches_tracked
            keep = nbt is not None and nbt.device.type != "meta"
            state_dict[key] = nbt if keep else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


class BatchNormBase(NormBase):
    """:class:`NormBase` with batch statistics: the feature ``axis``, the input-rank check
    (``_min_ndim``/``_max_ndim`` per subclass), torch's batch-norm prologue
    (:meth:`batch_state`) and the functional call it feeds (:meth:`apply_functional`)."""

    _min_ndim = 2
    _max_ndim: int | None = None

    @adds_options(NormBase)
    def __init__(self, *args: Any, axis: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.axis = axis

    @property
    def uses_batch_stats(self) -> bool:
        """Whether batch statistics normalize: in training, and in eval without running buffers."""
        return self.training or self.running_mean is None

    def batch_state(self) -> tuple[Tensor | None, Tensor | None, bool, Tensor | None]:
        """``(running_mean, running_var, use_batch_stats, num_batches_tracked)`` for the
        functional call, as torch's ``_BatchNorm.forward`` decides them.

        Batch statistics normalize in training, and in eval when there are no running buffers;
        the buffers are passed when they normalize (eval) or are updated (training with
        ``track_running_stats``); the batch counter moves only in the latter case (and with it
        the cumulative average of ``momentum=None``).
        """
        keep = not self.training or self.track_running_stats
        return (
            self.running_mean if keep else None,
            self.running_var if keep else None,
            self.uses_batch_stats,
            self.num_batches_tracked if self.training and self.track_running_stats else None,
        )

    def apply_functional(
        self, op: Callable[..., Tensor], input: Tensor, mask: Tensor | None, **options: Any
    ) -> Tensor:
        """``op(input, <this layer's batch-norm arguments for this step>, mask=mask, **options)``
        for a functional op with :func:`normkit.functional.batch_norm`'s arguments (batch norm,
        ghost batch norm, batch renorm): :meth:`batch_state`, the parameters and the options."""
        running_mean, running_var, use_batch_stats, num_batches_tracked = self.batch_state()
        return op(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch_stats,
            self.momentum,
            self.eps,
            axis=self.axis,
            num_batches_tracked=num_batches_tracked,
            nan_policy=self.nan_policy,
            mask=mask,
            backend=self.backend,
            **options,
        )

    def _check_input_dim(self, x: Tensor) -> None:
        check_rank(self, x)
        if not -x.ndim <= self.axis < x.ndim or x.shape[self.axis] != self.num_features:
            got = x.shape[self.axis] if -x.ndim <= self.axis < x.ndim else "no such axis"
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects {self.num_features} "
                f"features on axis {self.axis} (got input of shape {tuple(x.shape)}: {got}); set "
                "num_features to the input's feature count or pass the right axis="
            )

    def extra_options(self) -> str:
        s = f", axis={self.axis}" if self.axis != 1 else ""
        return s + super().extra_options()


class ChannelAffineBase(nn.Module):
    """Per-sample norm with a per-channel affine map on dim 1 and no running statistics
    (GroupNorm, ChannelNorm, LayerNorm2d): ``(num_channels, eps, affine, device, dtype, *,
    bias, backend)``."""

    _min_ndim = 2

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.backend = backend
        init_affine(self, num_channels, affine, bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = 0``."""
        reset_affine(self)

    def _check_channels(self, x: Tensor, hint: str = "") -> None:
        c = self.num_channels
        if x.ndim < self._min_ndim or x.shape[1] != c:
            dims = ", *" if self._min_ndim == 2 else ", L, ..."
            raise ValueError(
                f"{type(self).__name__}({c}) expects input (N, {c}{dims}) (got shape "
                f"{tuple(x.shape)}); num_channels must equal the input's dim 1{hint}"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}" + _backend_repr(self.backend)
        )


Activation = str | Callable[[Tensor], Tensor] | nn.Module | None

_ACTS: dict[str, Callable[[bool], nn.Module]] = {
    "relu": lambda inplace: nn.ReLU(inplace=inplace),
    "gelu": lambda inplace: nn.GELU(),
    "silu": lambda inplace: nn.SiLU(inplace=inplace),
    "swish": lambda inplace: nn.SiLU(inplace=inplace),
    "identity": lambda inplace: nn.Identity(),
}


class _Lambda(nn.Module):
    """A parameter-free module around a plain callable activation."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def make_activation(act: Activation, *, inplace: bool = False) -> nn.Module:
    """An activation module from ``"relu" | "gelu" | "silu" | "identity"``, ``None`` (identity),
    an ``nn.Module`` (used as is) or a callable ``Tensor -> Tensor``.

    ``inplace`` applies to ``relu``/``silu`` (GELU has no in-place form).

    >>> make_activation("silu", inplace=True)
    SiLU(inplace=True)
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        try:
            return _ACTS[act.lower()](inplace)
        except KeyError:
            raise ValueError(
                f"unknown activation {act!r}; expected one of {sorted(_ACTS)}, an nn.Module or a "
                "callable"
            ) from None
    if callable(act):
        return _Lambda(act)
    raise TypeError(f"act must be a string, nn.Module or callable (got {type(act).__name__})")


class ActivationMixin(nn.Module):
    """A norm followed by ``self.act`` (put first in the bases: ``class X(ActivationMixin, Norm)``).

    The activation is a submodule without parameters for the built-in names, so the state_dict
    stays the plain norm's.
    """

    act: nn.Module

    def set_activation(self, act: Activation, inplace: bool) -> None:
        """Build ``self.act`` (see :func:`make_activation`)."""
        self.act = make_activation(act, inplace=inplace)

    def forward(self, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.act(super().forward(input, *args, **kwargs))
