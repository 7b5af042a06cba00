"""``TargetScaler``: train a regression model on scaled targets, predict in original units."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn

from normkit.data._arrays import ArrayLike
from normkit.nn.normalization import Normalization

__all__ = ["TargetScaler"]


def _as_2d(y: ArrayLike) -> tuple[Any, bool]:
    is_1d = getattr(y, "ndim", np.ndim(y)) == 1
    if is_1d:
        y = y.reshape(-1, 1) if isinstance(y, Tensor) else np.asarray(y).reshape(-1, 1)
    return y, is_1d


def _back(y: Any, is_1d: bool) -> Any:
    return y.reshape(-1) if is_1d else y


class TargetScaler(BaseEstimator):
    """Scale regression targets for training and bring predictions back to original units —
    the role of scikit-learn's ``TransformedTargetRegressor``, for torch training loops.

    .. math:: \\tilde y = \\text{scaler}(y), \\qquad \\hat y = \\text{scaler}^{-1}(f(x))

    Training on standardized targets keeps the loss and gradients O(1) whatever the units of
    ``y``; the model's outputs are then in scaled units. :meth:`inverse_transform` (or the
    module from :meth:`wrap`, which appends an inverting
    :class:`normkit.nn.Normalization`) returns them in the original units. ``y`` may be 1-D
    ``(n,)`` or 2-D ``(n, targets)``, numpy or torch; the output has the same shape and type.

    Shapes: ``y`` is ``(n,)`` or ``(n, targets)``; predictions likewise.

    >>> x, y = torch.randn(64, 3), 1000 + 50 * torch.randn(64, 1)   # targets in large units
    >>> model = nn.Linear(3, 1)
    >>> ts = TargetScaler().fit(y)                       # StandardScaler by default
    >>> loss = nn.functional.mse_loss(model(x), ts.transform(y))   # train in scaled units
    >>> predictor = ts.wrap(model)                       # predicts in original units
    """

    def __init__(self, scaler: Any = None) -> None:
        self.scaler = scaler

    def fit(self, y: ArrayLike) -> TargetScaler:
        """Fit a clone of ``scaler`` (default :class:`~normkit.data.StandardScaler`) on ``y``."""
        from normkit.data._scalers import StandardScaler

        y2, _ = _as_2d(y)
        self.scaler_ = clone(self.scaler) if self.scaler is not None else StandardScaler()
        self.scaler_.fit(y2)
        return self

    def transform(self, y: ArrayLike) -> Any:
        """Targets in scaled units (what the model is trained on)."""
        check_is_fitted(self)
        y2, is_1d = _as_2d(y)
        return _back(self.scaler_.transform(y2), is_1d)

    def fit_transform(self, y: ArrayLike) -> Any:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(y).transform(y)

    def inverse_transform(self, y_scaled: ArrayLike) -> Any:
        """Predictions in original units (differentiable for tensors)."""
        check_is_fitted(self)
        y2, is_1d = _as_2d(y_scaled)
        return _back(self.scaler_.inverse_transform(y2), is_1d)

    def wrap(self, model: nn.Module) -> nn.Sequential:
        """``model`` followed by the inverse scaling: a module predicting in original units,
        whose ``state_dict`` carries the target statistics."""
        check_is_fitted(self)
        return nn.Sequential(model, Normalization.from_scaler(self.scaler_, invert=True))
