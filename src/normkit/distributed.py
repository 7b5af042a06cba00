"""Cross-process statistics for synchronized batch norm: gather partial moments, merge them.

The "combine" piece of *stats → combine → apply* over :mod:`torch.distributed`. Every rank
contributes its :class:`normkit._stats.Moments` (count, mean, M2 per feature); the moments of
the global batch are their exact Chan merge (:func:`normkit._stats.merge_moments`), which is
numerically stable and allows unequal (even empty) per-rank batches. The gather is
differentiable: its backward all-reduces the gradients of the gathered moments, so autograd
through the merge yields the synchronized batch-norm gradient (the all-reduced
``Σ dy`` and ``Σ dy·(x − μ)`` terms of the usual hand-written backward).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from normkit._stats import Moments, merge_moments

__all__ = ["all_gather_moments", "is_distributed"]


def is_distributed() -> bool:
    """Whether :mod:`torch.distributed` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


class _AllGatherRows(torch.autograd.Function):
    """``all_gather`` of one tensor per rank into a ``(world, *shape)`` stack, with autograd.

    Backward: the gradient of every rank's copy of row ``r`` is summed (all-reduce) and given to
    rank ``r``'s input — the total loss is the sum of the ranks' losses, as in data parallelism.
    """

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        t = t.contiguous()
        rows = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, t, group=group)
        return torch.stack(rows)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def all_gather_moments(local: Moments, group: Any = None) -> Moments:
    """The moments of the union of every rank's data: gather the partial moments, Chan-merge.

    ``local`` holds per-feature ``count``, ``mean``, ``m2`` of the same shape (``count`` may be
    0: an empty local batch is neutral). Differentiable in ``mean`` and ``m2``. One collective
    (``all_gather`` of ``3 × features`` values) forward, one ``all_reduce`` backward. Every rank
    of ``group`` must call it.

    >>> # in each of N processes: m = all_gather_moments(Moments.of(x, [0]))
    """
    count = torch.as_tensor(local.count, dtype=local.mean.dtype, device=local.mean.device)
    count = count.expand_as(local.mean)
    packed = torch.stack([count, local.mean, local.m2])
    rows = _AllGatherRows.apply(packed, group)
    return merge_moments([Moments(r[0].detach(), r[1], r[2]) for r in rows.unbind(0)])
