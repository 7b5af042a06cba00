"""``Normalization``: fitted per-feature scaling as an ``nn.Module``, so preprocessing ships
inside the saved model (the role of Keras' ``Normalization`` layer).

Also home of the two scikit-learn rules for degenerate features that :mod:`normkit.data` shares
(they live here, torch-only, so that ``normkit.nn`` does not need scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from normkit._stats import Moments, accumulation_dtype, merge_moments

__all__ = ["Normalization", "handle_zeros_in_scale", "std_scale"]


def handle_zeros_in_scale(scale: Tensor, constant_mask: Tensor | None = None) -> Tensor:
    """Replace the scale of (near-)constant features by 1, as scikit-learn does.

    Without ``constant_mask`` a scale below ``10·eps`` of its dtype counts as zero
    (``sklearn.preprocessing._data._handle_zeros_in_scale``). Returns a new tensor.
    """
    if constant_mask is None:
        constant_mask = scale < 10 * torch.finfo(scale.dtype).eps
    return torch.where(constant_mask, torch.ones_like(scale), scale)


def std_scale(var: Tensor, mean: Tensor, count: Tensor) -> Tensor:
    """``sqrt(var)``, with 1 for features indistinguishable from a constant (scikit-learn's rule).

    A feature is constant when its variance is within the error bound of the two-pass
    algorithm in float64 (Chan, Golub & LeVeque 1983):

    .. math:: \\sigma^2 \\le n\\,\\varepsilon\\,\\sigma^2 + (n\\,\\mu\\,\\varepsilon)^2,
        \\quad \\varepsilon = 2^{-52}

    so a column of identical values scales by 1 even when rounding leaves a tiny variance.
    Inputs are float64 tensors of shape ``(F,)`` (``count`` broadcastable).
    """
    return handle_zeros_in_scale(var.sqrt(), constant_features(var, mean, count))


def constant_features(var: Tensor, mean: Tensor, count: Tensor) -> Tensor:
    """Which features are indistinguishable from a constant: variance within the float64
    error bound of the two-pass algorithm, ``var ≤ n·ε·var + (n·μ·ε)²`` (scikit-learn's
    ``_is_constant_feature``; see :func:`std_scale`)."""
    eps = torch.finfo(torch.float64).eps
    return var <= count * eps * var + (count * mean * eps) ** 2


def _as_rows(x: Tensor, axis: int) -> Tensor:
    """``x`` with the feature axis last, flattened to ``(rows, F)``."""
    return x.movedim(axis, -1).reshape(-1, x.shape[axis])


class Normalization(nn.Module):
    """Per-feature affine scaling with fitted statistics held as buffers.

    .. math:: y = \\frac{x - \\mathrm{loc}}{\\mathrm{scale}}
        \\qquad (\\texttt{invert=True}:\\ y = x \\cdot \\mathrm{scale} + \\mathrm{loc})

    Features lie along ``axis`` (``-1``: the last dim, Keras' default; ``1`` for ``(N, C, H, W)``
    images); ``loc`` and ``scale`` have shape ``(num_features,)`` and are broadcast over every
    other dim. The statistics come from :meth:`adapt` (standardization: ``loc`` = mean,
    ``scale`` = standard deviation), from ``mean=``/``variance=`` (Keras' arguments), or from any
    fitted scaler via :meth:`from_scaler` (normkit's or scikit-learn's ``StandardScaler``,
    ``MinMaxScaler``, ``MaxAbsScaler``, ``RobustScaler``). Constant features (zero variance)
    get ``scale = 1`` as in scikit-learn (Keras divides by ``max(std, 1e-7)`` instead).
    ``invert=True`` un-scales, e.g. a regression head trained on scaled targets.

    Computation is in float32 for float16/bfloat16 inputs, else in the input dtype; the output
    has the input's dtype. Differentiable with respect to the input; the buffers are constants
    saved in the ``state_dict``.

    Shapes: input ``(*, F, *)`` with ``F`` at ``axis``; output the same shape.

    >>> norm = Normalization(axis=-1)
    >>> norm = norm.adapt(torch.randn(1000, 8) * 3 + 5)   # or an iterable of batches
    >>> y = norm(torch.randn(4, 8))                       # ≈ zero mean, unit variance
    >>> model = nn.Sequential(norm, nn.Linear(8, 1))      # saved together with the statistics
    """

    loc: Tensor
    scale: Tensor

    def __init__(
        self,
        num_features: int | None = None,
        *,
        axis: int = -1,
        mean: Any = None,
        variance: Any = None,
        invert: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if (mean is None) != (variance is None):
            raise ValueError(
                "Normalization takes mean= and variance= together (got only "
                f"{'mean' if mean is not None else 'variance'}); pass both, or neither and "
                "call .adapt(data)"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype or torch.float32}
        self.axis = int(axis)
        self.invert = bool(invert)
        if mean is not None:
            m = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
            v = torch.as_tensor(variance, dtype=torch.float64).reshape(-1)
            if num_features is None:
                num_features = max(m.numel(), v.numel())
            m, v = m.expand(num_features), v.expand(num_features)
            loc, scale = m, handle_zeros_in_scale(v.sqrt())
        elif num_features is not None:
            loc, scale = torch.zeros(num_features), torch.ones(num_features)
        else:
            loc, scale = torch.empty(0), torch.empty(0)
        self.num_features = num_features
        self.register_buffer("loc", loc.to(**factory))
        self.register_buffer("scale", scale.to(**factory))

    # ------------------------------------------------------------------ building

    @classmethod
    def from_scaler(
        cls,
        scaler: Any,
        *,
        axis: int = -1,
        invert: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> Normalization:
        """A layer applying a fitted scaler's ``transform`` (or, ``invert=True``, its inverse).

        Accepts normkit.data's or scikit-learn's fitted ``StandardScaler``, ``MinMaxScaler``
        (``y = x·scale_ + min_`` becomes ``loc = −min_/scale_``, ``scale = 1/scale_``),
        ``MaxAbsScaler`` and ``RobustScaler``. ``clip=True`` is not representable: clamp the
        output instead.

        >>> from normkit.data import StandardScaler
        >>> layer = Normalization.from_scaler(StandardScaler().fit(torch.randn(100, 3)))
        """
        name = type(scaler).__name__
        if getattr(scaler, "clip", False):
            raise ValueError(
                f"{name}(clip=True) cannot be turned into a Normalization layer; fit it with "
                "clip=False and apply torch.clamp to the layer's output"
            )

        def attr(a: str) -> Tensor | None:
            v = getattr(scaler, a, None)
            return None if v is None else torch.as_tensor(np.asarray(_host(v)), dtype=torch.float64)

        if not (hasattr(scaler, "scale_") or hasattr(scaler, "n_samples_seen_")):
            raise ValueError(
                f"from_scaler needs a fitted StandardScaler/MinMaxScaler/MaxAbsScaler/"
                f"RobustScaler (got an unfitted or unsupported {name}); call .fit(X) first"
            )
        n = int(scaler.n_features_in_)
        loc, scale = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        if hasattr(scaler, "data_min_"):  # MinMaxScaler: y = x * s + m
            s, m = attr("scale_"), attr("min_")
            assert s is not None and m is not None
            loc, scale = -m / s, 1 / s
        elif hasattr(scaler, "max_abs_"):
            max_abs_scale = attr("scale_")
            assert max_abs_scale is not None
            scale = max_abs_scale
        elif hasattr(scaler, "center_"):  # RobustScaler
            c, s = attr("center_"), attr("scale_")
            loc = c if c is not None else loc
            scale = s if s is not None else scale
        elif hasattr(scaler, "var_") or hasattr(scaler, "mean_"):  # StandardScaler
            m, s = attr("mean_"), attr("scale_")
            if m is not None and getattr(scaler, "with_mean", True):
                loc = m
            if s is not None:
                scale = s
        else:
            raise ValueError(f"from_scaler does not know how to read a {name}")
        layer = cls(n, axis=axis, invert=invert, device=device, dtype=dtype)
        layer._set(loc, scale)
        return layer

    def _set(self, loc: Tensor, scale: Tensor) -> None:
        factory: dict[str, Any] = {"device": self.loc.device, "dtype": self.loc.dtype}
        self.num_features = loc.numel()
        self.loc = loc.detach().to(**factory)
        self.scale = scale.detach().to(**factory)

    @torch.no_grad()
    def adapt(self, data: Any) -> Normalization:
        """Standardize with the mean and std of ``data``: a tensor/array or an iterable of them.

        Every dim but ``axis`` is reduced. Batches are merged exactly in float64 (Chan, Golub &
        LeVeque 1979), so an iterable gives the same statistics as one concatenated tensor; NaNs
        are ignored as in scikit-learn. Replaces previous statistics. Returns ``self``.
        """
        batches = [data] if isinstance(data, (Tensor, np.ndarray)) else data
        parts: list[Moments] = []
        for b in batches:
            x = torch.as_tensor(b)
            if not x.is_floating_point():
                x = x.to(torch.float64)
            if x.ndim == 0 or not -x.ndim <= self.axis < x.ndim:
                raise ValueError(
                    f"Normalization(axis={self.axis}) cannot adapt to a batch of shape "
                    f"{tuple(x.shape)}; give batches with the feature axis at {self.axis}"
                )
            rows = _as_rows(x, self.axis).to(torch.float64)
            expected = parts[0].mean.numel() if parts else (self.loc.numel() or rows.shape[1])
            if rows.shape[1] != expected:
                raise ValueError(
                    f"adapt: expected {expected} features at axis {self.axis} (got a batch of "
                    f"shape {tuple(x.shape)}); build the layer with the right num_features, or "
                    "Normalization(axis=...) without it to take the size from the data"
                )
            mask = ~torch.isnan(rows)
            filled = torch.where(mask, rows, torch.zeros((), dtype=rows.dtype))
            m = Moments.of(filled, [0], mask=mask)
            parts.append(Moments(m.count[0].cpu(), m.mean[0].cpu(), m.m2[0].cpu()))
        if not parts:
            raise ValueError("adapt needs at least one batch (got an empty iterable)")
        total = merge_moments(parts)
        var = total.m2 / total.count
        scale = std_scale(var, total.mean, total.count)
        self._set(torch.where(total.count > 0, total.mean, float("nan")), scale)
        return self

    # ------------------------------------------------------------------ forward

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        loc = state_dict.get(prefix + "loc")
        if loc is not None and self.loc.numel() == 0:  # a lazy layer takes the saved size
            self.loc = torch.empty_like(loc, device=self.loc.device, dtype=self.loc.dtype)
            self.scale = torch.empty_like(loc, device=self.scale.device, dtype=self.scale.dtype)
            self.num_features = loc.numel()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input: Tensor) -> Tensor:
        if self.loc.numel() == 0:
            raise RuntimeError(
                "Normalization is not adapted yet: call .adapt(data), pass mean= and variance=, "
                "or build it with Normalization.from_scaler(fitted_scaler)"
            )
        if input.ndim == 0 or not -input.ndim <= self.axis < input.ndim:
            raise ValueError(
                f"Normalization(axis={self.axis}) got an input of shape {tuple(input.shape)}"
            )
        f = input.shape[self.axis]
        if f != self.loc.numel():
            raise ValueError(
                f"Normalization expects {self.loc.numel()} features at axis {self.axis} (got "
                f"input of shape {tuple(input.shape)}); check axis= or adapt to this data"
            )
        shape = [1] * input.ndim
        shape[self.axis] = f
        cd = accumulation_dtype(input.dtype) if input.is_floating_point() else torch.float32
        loc, scale = self.loc.to(cd).view(shape), self.scale.to(cd).view(shape)
        x = input.to(cd)
        y = torch.addcmul(loc, x, scale) if self.invert else (x - loc) / scale
        return y.to(input.dtype) if input.is_floating_point() else y

    def extra_repr(self) -> str:
        return f"{self.num_features}, axis={self.axis}, invert={self.invert}"


def _host(v: Any) -> Any:
    return v.detach().cpu() if isinstance(v, Tensor) else v
