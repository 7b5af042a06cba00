"""Second derivatives through the training family's native paths (ghost batch norm, batch
renorm, masked batch norm, row-masked layer norm): their first-order backward treats the saved
batch statistics as constants; a ``create_graph`` backward must still give the true second
derivative (gradient penalties, meta-learning), checked by finite differences in float64."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from normkit import functional as NF


def _ghost(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return NF.ghost_batch_norm(x, None, None, w, b, True, virtual_batch_size=3)


def _renorm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    # r, d are constants to autograd (the paper's stop-gradient): running statistics far from
    # the batch's clip them at r_max = 3, d_max = 5, where they are locally constant, so finite
    # differences see the same function (fresh buffers per call)
    rm = torch.full((x.shape[1],), -10.0, dtype=x.dtype)
    rv = torch.full((x.shape[1],), 0.01, dtype=x.dtype)
    return NF.batch_renorm(x, rm, rv, w, b, True)


def _masked_bn(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    keep = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool)
    keep[1, 3:] = False  # padding at the end of the second sequence
    return NF.batch_norm(x, None, None, w, b, True, mask=keep)


def _masked_ln(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    keep = torch.ones(x.shape[0], x.shape[1], dtype=torch.bool)
    keep[0, 2] = False  # one whole row dropped
    return NF.layer_norm(x, (x.shape[-1],), w, b, mask=keep)


CASES: dict[str, tuple[Callable[[Tensor, Tensor, Tensor], Tensor], tuple[int, ...], str]] = {
    "ghost": (_ghost, (6, 3, 2, 2), "_GhostBatchNormFn"),
    "renorm": (_renorm, (5, 3, 2, 2), "_BatchRenormFn"),
    "masked batch norm": (_masked_bn, (3, 2, 5), "_MaskedBatchNormFn"),
    "row-masked layer norm": (_masked_ln, (2, 4, 3), "_RowMaskedLayerNormFn"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_second_derivatives_through_the_native_paths(case: str) -> None:
    fn, shape, native = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    c = shape[-1] if case == "row-masked layer norm" else shape[1]
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_()
    assert native in type(fn(x, w, b).grad_fn).__name__  # (the native path is the one tested)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_a_gradient_penalty_through_ghost_batch_norm_matches_the_composed_math() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, generator=g, dtype=torch.float64).add_(0.5).requires_grad_()
    b = torch.zeros(4, dtype=torch.float64, requires_grad=True)

    def penalty(f: Callable[[Tensor, Tensor, Tensor], Tensor]) -> list[Tensor]:
        (gx,) = torch.autograd.grad(f(x, w, b).tanh().sum(), x, create_graph=True)
        return list(torch.autograd.grad(gx.square().sum(), (x, w)))

    def composed(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        parts = [
            NF.batch_norm(x_i, None, None, w, b, True, backend="reference") for x_i in x.split(4)
        ]
        return torch.cat(parts)

    got = penalty(
        lambda x, w, b: NF.ghost_batch_norm(x, None, None, w, b, True, virtual_batch_size=4)
    )
    for a, e in zip(got, penalty(composed), strict=True):
        torch.testing.assert_close(a, e)
