"""Dynamic Tanh: ``DyT`` and ``replace_norms`` (swap a transformer's norms for it)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from normkit import functional as NF
from normkit._checks import check_positive

__all__ = ["DyT", "replace_norms"]


class DyT(nn.Module):
    """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, arXiv:2503.10622): a drop-in for
    LayerNorm/RMSNorm in transformers that normalizes nothing.

    .. math:: y = \\gamma \\odot \\tanh(\\alpha x) + \\beta

    α is one learnable scalar (``alpha_init``: the paper's 0.5 for non-LLM models; LLMs want
    smaller values, their Table 11), γ, β per feature of the last dim (initialised to 1 and 0).
    ``elementwise_affine=False`` drops γ and β, ``bias=False`` drops β. float16/bfloat16
    compute in float32. The numba backend runs it as one fused kernel forward and backward.

    >>> y = DyT(64)(torch.randn(2, 10, 64))
    """

    weight: Tensor | None
    bias: Tensor | None

    def __init__(
        self,
        num_features: int,
        alpha_init: float = 0.5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive("DyT", num_features=num_features)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.alpha_init = alpha_init
        self.elementwise_affine = elementwise_affine
        self.backend = backend
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            b = nn.Parameter(torch.empty(num_features, **factory)) if bias else None
            self.register_parameter("bias", b)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``alpha = alpha_init``, ``weight = 1``, ``bias = 0``."""
        nn.init.constant_(self.alpha, self.alpha_init)
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim < 1 or input.shape[-1] != self.num_features:
            raise ValueError(
                f"DyT({self.num_features}) expects an input whose last dim is "
                f"{self.num_features} (got shape {tuple(input.shape)}); DyT works on the last "
                "dim, move channels last first"
            )
        return NF.dyt(input, self.alpha, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_init={self.alpha_init}, "
            f"elementwise_affine={self.elementwise_affine}"
        )


_TARGETS = ("dyt",)
_TOKEN_TWINS = (nn.LayerNorm, nn.RMSNorm)


def _is_token_norm(module: nn.Module) -> bool:
    """A catalogued layer or RMS norm that takes one input and normalizes its last dim: torch's
    LayerNorm/RMSNorm and their exact twins (the catalog's ``torch_twin``)."""
    from normkit.nn import _catalog  # the catalog imports this module

    kind = _catalog.lookup(module)
    if kind is None or kind.family not in ("layer", "rms"):
        return False
    if not (kind.cls in _TOKEN_TWINS or kind.torch_twin in _TOKEN_TWINS):
        return False
    return len(getattr(module, "normalized_shape", ())) == 1


def replace_norms(model: nn.Module, target: str = "dyt", **kwargs: Any) -> nn.Module:
    """Swap every LayerNorm/RMSNorm of ``model`` over one trailing dim for ``target``, in place.

    The norms are found through :mod:`normkit.nn.catalog`: torch's LayerNorm/RMSNorm and every
    catalogued exact twin of them (normkit's, subclasses included).

    ``target="dyt"``: :class:`DyT` with the norm's γ (and β) copied, so that only the
    normalization changes; an RMSNorm's DyT gets β = 0, as in the paper's LLaMA runs (kwargs
    such as ``alpha_init`` or ``bias=False`` go to :class:`DyT`); the new module takes the old
    one's device and dtype. Norms over several trailing dims, and norms that are
    not per-token (BatchNorm, GroupNorm, LayerNorm2d) stay. Returns ``model``.

    >>> m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    >>> replace_norms(m, "dyt")[1]
    DyT(8, alpha_init=0.5, elementwise_affine=True)
    """
    if target not in _TARGETS:
        raise ValueError(f"replace_norms: target must be one of {_TARGETS} (got {target!r})")
    for name, child in list(model.named_children()):
        if _is_token_norm(child):
            setattr(model, name, _to_dyt(child, **kwargs))
        else:
            replace_norms(child, target, **kwargs)
    return model


def _to_dyt(norm: nn.Module, **kwargs: Any) -> DyT:
    weight: Tensor | None = getattr(norm, "weight", None)
    bias: Tensor | None = getattr(norm, "bias", None)
    ref = weight if weight is not None else next(norm.buffers(), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    opts: dict[str, Any] = {"elementwise_affine": weight is not None, **factory, **kwargs}
    dyt = DyT(cast(tuple[int, ...], norm.normalized_shape)[0], **opts)
    offset = getattr(norm, "offset", 0.0)
    with torch.no_grad():
        if weight is not None and dyt.weight is not None:
            dyt.weight.copy_(weight + offset)
        if bias is not None and dyt.bias is not None:
            dyt.bias.copy_(bias)
    return dyt
