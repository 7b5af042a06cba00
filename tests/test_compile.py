"""normkit layers on the numba backend under torch.compile and torch.export.

The kernels are ``torch.library`` custom ops with fake implementations and registered autograd,
so tracing needs no graph break. Oracles: the same modules run eagerly, torch.library.opcheck
(schema, fake tensor, autograd registration, AOT dispatch).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("numba")

import normkit.nn as nkn
from normkit.backends.numba import batch_norm, group_norm, layer_norm

CL = torch.channels_last


class Block(nn.Module):
    """A small net touching every numba op: conv → BN → GN → LN over channels, fused add+RMS."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nkn.BatchNorm2d(8, backend="numba")
        self.gn = nkn.GroupNorm(4, 8, backend="numba")
        self.ln = nkn.LayerNorm(8, backend="numba")
        self.add_rms = nkn.AddRMSNorm(8, eps=1e-6, backend="numba")
        self.add_ln = nkn.AddLayerNorm(8, backend="numba")
        self.rms = nkn.RMSNorm(8, backend="numba")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gn(self.bn(self.conv(x)))
        t = self.ln(h.permute(0, 2, 3, 1))
        y, s = self.add_rms(t, t * 0.5)
        z, s = self.add_ln(y, s)
        return self.rms(z) + s


def _inputs(channels_last: bool) -> torch.Tensor:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=CL) if channels_last else x


def _run(model: nn.Module, x: torch.Tensor, params: nn.Module):
    x = x.detach().clone().requires_grad_()
    params.zero_grad(set_to_none=True)
    y = model(x)
    y.square().sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in params.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_compile_fullgraph_matches_eager(channels_last):
    torch.manual_seed(0)
    eager = Block()
    compiled = Block()
    compiled.load_state_dict(eager.state_dict())
    fn = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    x = _inputs(channels_last)
    for _ in range(2):  # running statistics move between steps
        ye, gxe, gpe = _run(eager, x, eager)
        yc, gxc, gpc = _run(fn, x, compiled)
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gxc, gxe, rtol=1e-4, atol=1e-5)
        for name in gpe:
            torch.testing.assert_close(gpc[name], gpe[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.bn.running_mean, eager.bn.running_mean)
    torch.testing.assert_close(compiled.bn.running_var, eager.bn.running_var)


def test_export_lowers_numba_layers_to_standard_ops():
    """torch.export (and so torch.onnx) sees the standard-op path of layers built with the numba
    backend: no runtime outside normkit knows its custom ops (tests/test_export.py has the rest)."""
    torch.manual_seed(0)
    model = Block().eval()
    x = _inputs(False)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("normkit" in t for t in targets), targets
    assert any("layer_norm" in t for t in targets), targets
    assert any("group_norm" in t for t in targets), targets
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


def _op_cases():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x3, w6 = r(2, 6, 5), r(6)
    x4 = r(2, 6, 3, 3).contiguous(memory_format=CL)
    rows, w5 = r(4, 5), r(5)
    return [
        (layer_norm.LAYER_NORM.op, (rows, None, w5, w5, 5, 1e-5, True)),
        (layer_norm.LAYER_NORM.op, (rows, rows.clone(), w5, None, 5, 1e-5, False)),
        (batch_norm.BATCH_NORM.op, (x3, w6, w6, 1e-5, 1)),
        (batch_norm.BATCH_NORM.op, (x4, w6, None, 1e-5, 1)),
        (batch_norm.BATCH_NORM_EVAL.op, (x3, w6, w6.abs() + 1, w6, w6, 1e-5, 1)),
        (group_norm.GROUP_NORM.op, (x3, w6, w6, 3, 1e-5)),
        (group_norm.GROUP_NORM.op, (x4, None, w6, 2, 1e-5)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_opcheck_custom_ops(case):
    op, args = _op_cases()[case]
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(op, args)


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    torch.manual_seed(0)
    eager = Block()
    compiled = Block()
    compiled.load_state_dict(eager.state_dict())
    fn = torch.compile(compiled, fullgraph=True)
    x = _inputs(True)
    ye, gxe, _ = _run(eager, x, eager)
    yc, gxc, _ = _run(fn, x, compiled)
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gxc, gxe, rtol=1e-4, atol=1e-5)


def test_real_tensor_tracing_records_the_custom_op():
    """make_fx with real tensors (and any user TorchDispatchMode) hands the layer plain tensors
    while torch.compiler.is_compiling() and is_exporting() are False: only the dispatch-mode stack
    tells ``traced`` to take the custom op, which the graph must record (an eager numba call would
    bake this input's result into the graph)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    ln = nkn.LayerNorm(8, backend="numba")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    graph = make_fx(ln, tracing_mode="real")(x)
    targets = {n.target for n in graph.graph.nodes if n.op == "call_function"}
    assert torch.ops.normkit.numba_layer_norm.default in targets
    other = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(graph(other), ln(other))
