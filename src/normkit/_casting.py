"""Parity presets: where RMSNorm and LayerNorm cast between dtypes, as each model family does.

The same RMSNorm formula gives different bits in different stacks because the casts sit in
different places (transformers#30236, TransformerEngine#1132, Liger-Kernel#74/#89): whether the
weight multiplies before or after the cast back to the input dtype, whether Gemma's ``1 + w`` is
formed in float32, which dtype the product ends in. A preset fixes those points, so a model
ported from Hugging Face gives the logits it gave there, bit for bit.

Notation: ``x`` the input (dtype ``d``), ``w`` the weight (dtype ``d_w``), ``o`` the offset
(``zero_centered``: ``o = 1``, the stored weight is ``w`` and the scale is ``o + w``), ``a`` the
accumulation dtype (float32, float64 for float64 inputs), ``n`` the number of normalized
elements, ``⟨·⟩ₜ`` a cast to dtype ``t``, and every product rounded in the dtype torch's type
promotion gives it. RMSNorm (``r = 1/√(Σ⟨x⟩ₐ²/n + ε)``, the sum and the division in ``a``):

=========  =============================================  ==========================================
casting    y                                              as in
=========  =============================================  ==========================================
``torch``  ``F.rms_norm(x, w' = o + w, ε)``               torch.nn.RMSNorm (torch's own kernel)
``llama``  ``(o + w) · ⟨⟨x⟩ₐ · r⟩_d``                     LlamaRMSNorm, Mistral, Qwen2, Phi-3
``gemma``  ``⟨⟨x⟩ₐ · r · (o + ⟨w⟩ₐ)⟩_d``, ``o = 1``       GemmaRMSNorm (``1 + w`` in float32)
``t5``     ``(o + w) · ⟨x · r⟩_{d_w if half else a}``      T5LayerNorm
``fp32``   ``⟨⟨x⟩ₐ · r · (o + ⟨w⟩ₐ)⟩_d``                   one cast at the end, everything in ``a``
=========  =============================================  ==========================================

LayerNorm takes ``torch`` (``F.layer_norm`` on the input as given), ``llama`` (``x̂ = ⟨x⟩ₐ``
normalized in ``a``, cast to ``d``, then ``(o + w)·x̂ + b``), ``gemma``/``fp32`` (affine in ``a``,
one cast at the end); ``t5`` is RMSNorm only (T5 has no centred norm).

Differences from the Hugging Face code, on purpose: float64 inputs compute in float64 (their
code casts them to float32; float64 is what gradient checks run in). The output dtype follows
the formula, so a float32 weight with a bfloat16 input gives float32 under ``llama`` and ``t5``,
as in transformers.

These functions are the implementation of the ``rms_norm_cast``/``layer_norm_cast`` ops of the
``reference`` and ``torch`` backends; a backend that claims a preset must match them bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from normkit._stats import accumulation_dtype

__all__ = ["CASTINGS", "LAYER_NORM_CASTINGS", "Casting", "layer_norm_cast", "rms_norm_cast"]

Casting = Literal["torch", "llama", "gemma", "t5", "fp32"]
CASTINGS: tuple[str, ...] = get_args(Casting)
LAYER_NORM_CASTINGS: tuple[str, ...] = ("torch", "llama", "gemma", "fp32")
_HALF = (torch.float16, torch.bfloat16)


def check_casting(casting: str, allowed: Sequence[str], op: str) -> None:
    """Raise a ValueError naming the presets when ``casting`` is not one of ``allowed``."""
    if casting not in allowed:
        extra = " (t5 is an RMS norm; use RMSNorm(casting='t5'))" if casting == "t5" else ""
        raise ValueError(
            f"{op}: casting must be None or one of {tuple(allowed)} (got {casting!r}){extra}"
        )


def _scale(weight: Tensor, offset: float, dtype: torch.dtype | None = None) -> Tensor:
    w = weight if dtype is None else weight.to(dtype)
    return w + offset if offset else w


def _dims(x: Tensor, normalized_shape: Sequence[int]) -> list[int]:
    return list(range(x.ndim - len(normalized_shape), x.ndim))


def rms_norm_cast(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    eps: float,
    casting: str,
    offset: float,
) -> Tensor:
    """RMSNorm with the cast points of ``casting`` (see the module docstring for the formulas)."""
    if casting == "torch":
        w = None if weight is None else _scale(weight, offset)
        return F.rms_norm(x, tuple(normalized_shape), w, eps)
    dims = _dims(x, normalized_shape)
    acc = accumulation_dtype(x.dtype)
    if casting == "t5":
        variance = x.to(acc).pow(2).mean(dims, keepdim=True)
        h = x * torch.rsqrt(variance + eps)
        if weight is None:
            return h.to(x.dtype)
        if weight.dtype in _HALF:
            h = h.to(weight.dtype)
        return _scale(weight, offset) * h
    xa = x.to(acc)
    h = xa * torch.rsqrt(xa.pow(2).mean(dims, keepdim=True) + eps)
    if casting == "llama":
        h = h.to(x.dtype)
        return h if weight is None else _scale(weight, offset) * h
    if weight is not None:  # gemma, fp32
        h = h * _scale(weight, offset, acc)
    return h.to(x.dtype)


def layer_norm_cast(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    casting: str,
    offset: float,
) -> Tensor:
    """LayerNorm with the cast points of ``casting`` (see the module docstring)."""
    shape = tuple(normalized_shape)
    if casting == "torch":
        w = None if weight is None else _scale(weight, offset)
        return F.layer_norm(x, shape, w, bias, eps)
    acc = accumulation_dtype(x.dtype)
    h = F.layer_norm(x.to(acc), shape, None, None, eps)
    if casting == "llama":
        h = h.to(x.dtype)
        if weight is not None:
            h = _scale(weight, offset) * h
        return h if bias is None else h + bias
    if weight is not None:  # gemma, fp32
        h = h * _scale(weight, offset, acc)
    if bias is not None:
        h = h + bias.to(acc)
    return h.to(x.dtype)
