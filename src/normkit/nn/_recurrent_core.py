"""The math of the layer-normalized recurrent cells, shared by the cells and the sequence modules.

Private: :mod:`normkit.nn.recurrent` holds the public modules. A recurrent update here is split
into the part that does not depend on the hidden state (the input projection ``W_ih x`` and its
layer norm, computed for *all* time steps at once as one batched op) and the per-step part (the
recurrent projection ``W_hh h``, its layer norm, the gate nonlinearities and, for the LSTM, the
layer norm of the cell state). Pre-activations are viewed as ``(..., G, H)`` (``G`` gate blocks
of ``hidden_size`` each, in torch's gate order) so that one layer-norm call normalizes every gate
block separately, with statistics per sample and per time step.

Every layer norm goes through the normkit backend registry (:func:`normkit.backends.resolve`,
op ``layer_norm``); the backend is resolved once per sequence, not once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from normkit import backends

__all__ = [
    "GATES",
    "SITES",
    "LayerNormFn",
    "Mode",
    "StepParams",
    "hidden_part",
    "input_part",
    "layer_norm_fn",
    "run_direction",
    "step",
]

Mode = Literal["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
#: Number of gate blocks of ``hidden_size`` rows in ``weight_ih``/``weight_hh`` (torch's layout).
GATES: dict[str, int] = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
#: Places a layer norm can sit: the input and the recurrent pre-activations, the LSTM cell state.
SITES: tuple[str, ...] = ("ih", "hh", "cell")

LayerNormFn = Callable[[Tensor, Tensor | None, Tensor | None], Tensor]


def layer_norm_fn(sample: Tensor, hidden_size: int, eps: float, backend: str) -> LayerNormFn:
    """``f(x, weight, bias)``: layer norm over the last dim (``hidden_size``) by the backend
    that :func:`normkit.backends.resolve` picks for ``sample`` (checked once, called per step).

    Pass a ``sample`` of the shape the function will see: the auto rule depends on the size
    (a per-step ``(B, G, H)`` tensor may pick another backend than the hoisted ``(T, B, G, H)``).
    """
    op = backends.resolve("layer_norm", sample, backend).ops["layer_norm"]
    shape = (hidden_size,)

    def ln(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        return op(x, shape, weight, bias, eps)

    return ln


@dataclass(frozen=True)
class StepParams:
    """The tensors one direction of one layer (or one cell) needs; ``None`` = site/bias off.

    ``bias_hh`` is applied inside the step only where it cannot be folded into the input part
    (the GRU's candidate gate multiplies it by the reset gate); otherwise it is ``None`` here and
    already added to the input part.
    """

    weight_hh: Tensor
    ln_hh_weight: Tensor | None
    bias_hh: Tensor | None
    ln_cell_weight: Tensor | None
    ln_cell_bias: Tensor | None


def _gain_bias(y: Tensor, gain: Tensor | None, bias: Tensor | None) -> Tensor:
    if gain is not None:
        return y * gain if bias is None else torch.addcmul(bias, y, gain)
    return y if bias is None else y + bias


def input_part(
    x: Tensor,
    weight_ih: Tensor,
    bias: Tensor | None,
    ln_weight: Tensor | None,
    gates: int,
    ln: LayerNormFn,
) -> Tensor:
    """``LN(W_ih x) ⊙ γ_ih + bias`` as ``(..., G, H)``; one batched op for all leading dims.

    ``bias`` is ``(G, H)`` (``bias_ih``, plus ``bias_hh`` where it can be folded in) or ``None``;
    ``ln_weight`` is the per-gate gain ``(G, H)`` or ``None`` (site off: no layer norm).
    """
    a = F.linear(x, weight_ih).unflatten(-1, (gates, -1))
    if ln_weight is not None:
        a = ln(a, None, None)
    return _gain_bias(a, ln_weight, bias)


def hidden_part(h: Tensor, p: StepParams, gates: int, ln: LayerNormFn) -> Tensor:
    """``LN(W_hh h) ⊙ γ_hh (+ bias_hh)`` as ``(B, G, H)``."""
    a = (h @ p.weight_hh.t()).unflatten(-1, (gates, -1))
    if p.ln_hh_weight is not None:
        a = ln(a, None, None)
    return _gain_bias(a, p.ln_hh_weight, p.bias_hh)


def step(
    mode: str, xg: Tensor, h: Tensor, c: Tensor | None, p: StepParams, ln: LayerNormFn
) -> tuple[Tensor, Tensor | None]:
    """One time step from the input part ``xg`` ``(B, G, H)``: returns ``(h_t, c_t)``.

    LSTM (gate order i, f, g, o as torch): ``c_t = σ(f)⊙c + σ(i)⊙tanh(g)``,
    ``h_t = σ(o)⊙tanh(LN(c_t))``. GRU (r, z, n): ``n = tanh(x_n + r⊙hh_n)``,
    ``h_t = (1−z)⊙n + z⊙h``. RNN: ``h_t = tanh|relu(x + hh)``.
    """
    # Gate blocks are taken apart with one unbind (one backward node that stacks), not with
    # per-gate indexing (each index's backward would allocate and zero-fill the whole tensor).
    hg = hidden_part(h, p, GATES[mode], ln)
    if mode == "LSTM":
        assert c is not None
        g = xg + hg
        i, f, _, o = torch.sigmoid(g).unbind(1)
        c = torch.addcmul(f * c, i, torch.tanh(g.unbind(1)[2]))
        cn = c if p.ln_cell_weight is None else ln(c, p.ln_cell_weight, p.ln_cell_bias)
        return o * torch.tanh(cn), c
    if mode == "GRU":
        x_r, x_z, x_n = xg.unbind(1)
        h_r, h_z, h_n = hg.unbind(1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(torch.addcmul(x_n, r, h_n))
        return torch.lerp(n, h, z), None
    pre = (xg + hg).squeeze(1)
    return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), None


def run_direction(
    mode: str,
    xg: Tensor,
    h: Tensor,
    c: Tensor | None,
    p: StepParams,
    ln: LayerNormFn,
    *,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run the time loop over the input part ``xg`` ``(T, B, G, H)``.

    Returns ``(output (T, B, H), h_T, c_T)``. ``reverse`` walks ``t = T−1 … 0``. ``mask``
    ``(T, B, 1)`` bool marks valid steps of padded sequences: on an invalid step the state is
    carried unchanged, so a row's final state is the state after its last valid step (forward)
    or after ``t = 0`` having started from the initial state (reverse), as torch's packed RNNs.
    Outputs at invalid steps are unspecified (the caller drops them).
    """
    steps: Sequence[int] = range(xg.shape[0] - 1, -1, -1) if reverse else range(xg.shape[0])
    outs: list[Tensor] = [h] * xg.shape[0]
    xs = xg.unbind(0)  # one backward node for all steps (xg[t] would zero-fill (T, …) per step)
    for t in steps:
        h_new, c_new = step(mode, xs[t], h, c, p, ln)
        outs[t] = h_new
        if mask is None:
            h, c = h_new, c_new
        else:
            m = mask[t]
            h = torch.where(m, h_new, h)
            c = None if c is None or c_new is None else torch.where(m, c_new, c)
    return torch.stack(outs), h, c
