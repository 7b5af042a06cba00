"""Example data shared by the lab, the benchmarks and ``normkit doctor``: scikit-learn's bundled
datasets (no downloads) and generated tasks.

The loaders return a :class:`Split` of float32/int64 tensors, split reproducibly by ``seed``
(stratified for classification); :func:`digits_images` returns the whole digits set. The raw
arrays are read once per process and cached.

* ``digits`` — 1797 handwritten digits, 8×8 pixels scaled to [0, 1], as ``"images"``
  ``(N, 1, 8, 8)``, ``"vectors"`` ``(N, 64)`` or ``"sequence"`` ``(N, 8, 8)`` (8 steps of 8-pixel
  rows).
* ``breast_cancer`` (569 × 30), ``wine`` (178 × 13) — raw features on mixed scales.
* ``diabetes`` — regression, 442 × 10, raw (unscaled) features and target (25…346).
* :func:`long_range` — a generated sequence task whose label depends only on the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from normkit._optional import require

__all__ = ["Split", "digits", "digits_images", "long_range", "tabular"]

DigitsForm = Literal["images", "vectors", "sequence"]


@dataclass(frozen=True)
class Split:
    """Train/test tensors. ``y`` is int64 class ids (classification) or float32 (regression)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int  # 0 for regression

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])


@cache
def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets", extra="data", feature=f"the {name} example data")
    if name == "digits":
        d = datasets.load_digits()
        return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    if name == "breast_cancer":
        d = datasets.load_breast_cancer()
        return d.data.astype(np.float32), d.target.astype(np.int64)
    if name == "wine":
        d = datasets.load_wine()
        return d.data.astype(np.float32), d.target.astype(np.int64)
    if name == "diabetes":
        d = datasets.load_diabetes(scaled=False)
        return d.data.astype(np.float32), d.target.astype(np.float32)
    raise ValueError(
        f"unknown dataset {name!r}; expected 'digits', 'breast_cancer', 'wine' or 'diabetes'"
    )


def _split(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    test_fraction: float,
    n_train: int | None,
    stratify: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_test_split = require(
        "sklearn.model_selection", extra="data", feature="the example data splits"
    ).train_test_split
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y if stratify else None
    )
    if n_train is not None:
        if not 0 < n_train <= len(xtr):
            raise ValueError(f"n_train must be in 1..{len(xtr)} (got {n_train})")
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    return xtr, xte, ytr, yte


def digits(
    seed: int,
    form: DigitsForm = "vectors",
    *,
    test_fraction: float = 1 / 3,
    n_train: int | None = None,
) -> Split:
    """The digits dataset split by ``seed``; ``n_train`` keeps only the first training samples.

    >>> s = digits(0, "images")
    >>> s.x_train.shape[1:]
    torch.Size([1, 8, 8])
    """
    x, y = _sklearn("digits")
    xtr, xte, ytr, yte = _split(x, y, seed, test_fraction, n_train, True)
    shape = {"images": (-1, 1, 8, 8), "vectors": (-1, 64), "sequence": (-1, 8, 8)}
    if form not in shape:
        raise ValueError(f"form must be 'images', 'vectors' or 'sequence' (got {form!r})")
    return Split(
        torch.from_numpy(np.ascontiguousarray(xtr)).reshape(shape[form]),
        torch.from_numpy(ytr),
        torch.from_numpy(np.ascontiguousarray(xte)).reshape(shape[form]),
        torch.from_numpy(yte),
        10,
    )


def digits_images() -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``(x, y)``: ``x`` float32 ``(1797, 1, 8, 8)`` scaled to [0, 1], ``y``
    int64 labels 0–9 (no split: the default data of ``normkit doctor``).

    >>> x, y = digits_images()
    >>> tuple(x.shape)
    (1797, 1, 8, 8)
    """
    x, y = _sklearn("digits")
    return torch.tensor(x).reshape(-1, 1, 8, 8), torch.tensor(y)


def tabular(name: str, seed: int, *, test_fraction: float = 0.3) -> Split:
    """``breast_cancer``, ``wine`` (classification) or ``diabetes`` (regression), raw scales."""
    x, y = _sklearn(name)
    regression = name == "diabetes"
    xtr, xte, ytr, yte = _split(x, y, seed, test_fraction, None, not regression)
    return Split(
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        torch.from_numpy(xte),
        torch.from_numpy(yte),
        0 if regression else int(y.max()) + 1,
    )


def long_range(
    seed: int,
    *,
    length: int = 30,
    features: int = 4,
    num_classes: int = 4,
    n_train: int = 1024,
    n_test: int = 512,
) -> Split:
    """A sequence task whose label is set by the first step only; the rest is noise.

    Step 0 carries a one-hot class code; steps 1…length−1 are standard normal noise. The model
    must carry the first step's information through ``length − 1`` recurrent updates.
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    n = n_train + n_test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, length, features, generator=g)
    code = torch.zeros(n, features)
    code[torch.arange(n), y % features] = 3.0
    x[:, 0] = code + 0.1 * torch.randn(n, features, generator=g)
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes)
