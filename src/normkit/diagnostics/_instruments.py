"""On-demand instruments: the top Hessian eigenvalue of the loss and the gradient noise.

Both evaluate ``loss_fn(model(inputs), targets)`` through :func:`torch.func.functional_call`
with copies of the model's buffers, so batch norms in training mode use the batch's statistics
but the model's running statistics, parameters and ``.grad`` stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["gradient_noise", "top_hessian_eigenvalue"]

LossFn = Callable[[Any, Any], Tensor]


def _check_batch(batch: Any) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"batch must be a pair (inputs, targets) (got {type(batch).__name__}); loss_fn is "
            "called as loss_fn(model(inputs), targets)"
        )
    return batch[0], batch[1]


def _loss_of(
    model: nn.Module, loss_fn: LossFn
) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor], Any, Any], Tensor]]:
    """Detached copies of the trainable parameters (requiring grad) and ``loss(params, x, y)``
    evaluated with copies of the buffers."""
    params = {
        n: p.detach().clone().requires_grad_()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter that requires grad")

    def loss(ps: dict[str, Tensor], x: Any, y: Any) -> Tensor:
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        out = loss_fn(functional_call(model, (ps, buffers), (x,)), y)
        if not (isinstance(out, Tensor) and out.numel() == 1):
            raise ValueError(f"loss_fn must return a scalar tensor (got {out!r:.80})")
        return out.reshape(())

    return params, loss


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    batch: tuple[Any, Any],
    *,
    iters: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[float, int]:
    """The eigenvalue λ of largest magnitude of the Hessian H of ``loss_fn(model(x), y)``
    w.r.t. the trainable parameters, by power iteration ``v ← Hv/‖Hv‖`` (Rayleigh quotient
    λ = vᵀHv) on Hessian-vector products (double backward of one graph; Pearlmutter 1994);
    stops when λ changes by less than ``tol``·|λ| or after ``iters`` products. Returns
    ``(λ, products used)``. Gradient descent on the quadratic model of the loss is stable
    for lr < 2/λ (LeCun, Simard & Pearlmutter 1993).

    >>> import torch.nn.functional as F
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> lam, n = top_hessian_eigenvalue(model, F.cross_entropy, (x, y))
    >>> n <= 50
    True
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1 (got {iters})")
    x, y = _check_batch(batch)
    params, loss = _loss_of(model, loss_fn)
    ps = list(params.values())
    grads = torch.autograd.grad(loss(params, x, y), ps, create_graph=True)
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in ps]
    scale = math.sqrt(sum(float(t.square().sum()) for t in v))
    v = [t / scale for t in v]
    lam = math.nan
    for i in range(1, iters + 1):
        hv = torch.autograd.grad(grads, ps, grad_outputs=v, retain_graph=True)
        new = sum(float((a * b).sum()) for a, b in zip(v, hv, strict=True))
        size = math.sqrt(sum(float(h.square().sum()) for h in hv))
        if size == 0:
            return 0.0, i
        v = [h / size for h in hv]
        done = abs(new - lam) <= tol * abs(new)
        lam = new
        if done:
            return lam, i
    return lam, iters


def gradient_noise(
    model: nn.Module,
    loss_fn: LossFn,
    batch: tuple[Any, Any],
    *,
    groups: int = 8,
    layers: Mapping[str, Sequence[Tensor]] | None = None,
) -> tuple[int, int, dict[str, float], float, float]:
    """Gradient signal-to-noise of one batch from ``groups`` micro-batch gradients.

    With micro-batch gradients g₁…g_M (M = ``groups``, b = batch/M samples each, ``loss_fn``
    averaging over samples), ḡ their mean and S = Σ‖gᵢ − ḡ‖²/(M − 1): the batch gradient's
    noise variance is S/M, its signal ‖G‖² = ‖ḡ‖² − S/M (unbiased), SNR = ‖G‖²/(S/M) and the
    simple noise scale B = b·S/‖G‖² (McCandlish et al. 2018). ``groups`` equal to the batch
    size gives per-sample gradients. ``layers`` maps names to parameters (default: each
    parameter its own layer). Returns ``(batch, groups, {layer: SNR}, total SNR, B)``.

    >>> import torch.nn.functional as F
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> batch, m, per_layer, snr, scale = gradient_noise(model, F.cross_entropy, (x, y))
    >>> batch, m
    (32, 8)
    """
    x, y = _check_batch(batch)
    n = len(x)
    if isinstance(groups, bool) or not isinstance(groups, int) or not 2 <= groups <= n:
        raise ValueError(
            f"groups must be an int in [2, batch size {n}] (got {groups!r}); use groups={n} "
            "for per-sample gradients"
        )
    params, loss = _loss_of(model, loss_fn)
    by_id = {id(p): name for name, p in model.named_parameters() if name in params}
    if layers is None:
        layers = {name: [p] for name, p in model.named_parameters() if name in params}
    names = list(params)
    total = [torch.zeros_like(p) for p in params.values()]
    sq = [0.0] * len(names)  # Σᵢ ‖gᵢ‖² per parameter
    for idx in torch.tensor_split(torch.arange(n), groups):
        gs = torch.autograd.grad(loss(params, x[idx], y[idx]), list(params.values()))
        for k, gk in enumerate(gs):
            total[k] += gk
            sq[k] += float(gk.square().sum())
    mean_sq = [float(t.square().sum()) / groups**2 for t in total]  # ‖ḡ‖² per parameter
    pos = {name: k for k, name in enumerate(names)}

    def snr(ks: list[int]) -> tuple[float, float]:
        s = sum((sq[k] - groups * mean_sq[k]) / (groups - 1) for k in ks)
        signal = sum(mean_sq[k] for k in ks) - s / groups
        if s <= 0:
            return math.inf, 0.0
        scale = (n / groups) * s / signal if signal > 0 else math.inf
        return max(signal, 0.0) / (s / groups), scale

    per_layer = {}
    for layer, ps in layers.items():
        ks = [pos[by_id[id(p)]] for p in ps if id(p) in by_id]
        if ks:
            per_layer[layer] = snr(ks)[0]
    total_snr, scale = snr(list(range(len(names))))
    return n, groups, per_layer, total_snr, scale
