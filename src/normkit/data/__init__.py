"""Data normalization: scikit-learn-compatible scalers that work on numpy arrays and torch
tensors (CPU or GPU), stream over data that does not fit in memory, merge across workers and
processes, and turn into an ``nn.Module`` so preprocessing ships inside the model.

Needs scikit-learn (the scalers are real scikit-learn estimators, usable in a ``Pipeline``):
``pip install 'normkit[data]'`` (scikit-learn >= 1.9).

* :class:`StandardScaler`, :class:`MinMaxScaler`, :class:`MaxAbsScaler`,
  :class:`RobustScaler`, :class:`Normalizer`, :func:`normalize` — scikit-learn's parameters,
  fitted attributes, NaN and zero-variance rules; numpy in → numpy out, tensor in → tensor out
  (same device and dtype, differentiable).
* scikit-learn's parameters (validated as scikit-learn does), ``copy=``, ``sample_weight`` and
  metadata routing for ``StandardScaler``; scipy and torch sparse input for ``MaxAbsScaler``,
  ``StandardScaler(with_mean=False)``, ``RobustScaler(with_centering=False)`` and
  ``Normalizer``, kept sparse.
* ``partial_fit`` over chunks = one ``fit`` (exact float64 Chan merge, weighted or not); ``merge(other)`` for
  parallel workers; ``fit_distributed(x)`` over ``torch.distributed`` (every rank gets the
  global scaler).
* :class:`TargetScaler` — scaled regression targets, predictions back in original units.
* :class:`normkit.nn.Normalization` — the fitted statistics as buffers of a layer
  (``Normalization.from_scaler(scaler)`` or ``.adapt(data)``).

>>> from normkit.data import StandardScaler
>>> sc = StandardScaler().fit(np.random.rand(100, 3))
>>> z = sc.transform(torch.rand(8, 3))   # tensor in, tensor out (same device and dtype)
"""

from normkit._optional import require

require("sklearn", extra="data", feature="normkit.data")

# ruff: noqa: E402  (the imports below come after the dependency check)
from normkit.data._power import PowerTransformer
from normkit.data._quantile import QuantileTransformer
from normkit.data._scalers import (
    MaxAbsScaler,
    MinMaxScaler,
    Normalizer,
    RobustScaler,
    StandardScaler,
    normalize,
)
from normkit.data._target import TargetScaler

__all__ = [
    "MaxAbsScaler",
    "MinMaxScaler",
    "Normalizer",
    "PowerTransformer",
    "QuantileTransformer",
    "RobustScaler",
    "StandardScaler",
    "TargetScaler",
    "normalize",
]
