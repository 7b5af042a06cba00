"""torch.compile(fullgraph=True) of a model with normkit layers raises no warning of normkit's
making (a Dynamo warning about a cached helper, a graph-break hint, a deprecation).

Warnings are errors while compiling; ``aot_eager`` traces what inductor would (Dynamo, then
AOTAutograd with fake tensors, forward and backward) without its C++ code generation. Oracle: the
same model run eagerly.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import normkit.nn as nkn


class _Tiny(nn.Module):
    """One layer of each core family on small inputs (the auto rule picks the torch backend)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nkn.BatchNorm2d(4)
        self.gn = nkn.GroupNorm(2, 4)
        self.inorm = nkn.InstanceNorm2d(4, affine=True)
        self.ln = nkn.LayerNorm(16)
        self.rms = nkn.RMSNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inorm(self.gn(self.bn(self.conv(x)))).flatten(2)
        return self.rms(self.ln(h))


def test_compile_fullgraph_warns_nothing_and_matches_eager():
    torch.manual_seed(0)
    model = _Tiny()
    eager = _Tiny()
    eager.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for train in (True, False):
            model.train(train)
            eager.train(train)
            y = compiled(x)
            y.square().sum().backward()
            torch.testing.assert_close(y, eager(x))
    torch.testing.assert_close(model.bn.running_var, eager.bn.running_var)
