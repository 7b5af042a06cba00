"""Layer-normalized recurrent networks: LN-RNN, LN-LSTM, LN-GRU cells and sequence modules.

Layer normalization "can be easily applied to recurrent neural networks by computing the
normalization statistics separately at each time step" (Ba, Kiros & Hinton 2016,
arXiv:1607.06450, §3.1 and §6). For the LSTM (gate order i, f, g, o as :class:`torch.nn.LSTM`):

.. math::
    \\begin{pmatrix} i \\\\ f \\\\ g \\\\ o \\end{pmatrix}
      = \\mathrm{LN}(W_{ih} x_t; \\gamma_{ih}) + \\mathrm{LN}(W_{hh} h_{t-1}; \\gamma_{hh})
        + b_{ih} + b_{hh}

    c_t = \\sigma(f) \\odot c_{t-1} + \\sigma(i) \\odot \\tanh(g), \\qquad
    h_t = \\sigma(o) \\odot \\tanh(\\mathrm{LN}(c_t; \\gamma_c, \\beta_c))

Each layer norm is taken per gate block (statistics per sample, per time step, per gate over the
``hidden_size`` units). The paper's LN shifts ``β`` of the two pre-activation sites are the
biases ``bias_ih``/``bias_hh`` (applied after the normalization), so the parameter names and
layout are exactly torch's (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``; the sequence
modules add the ``_l{k}[_reverse]`` suffixes) plus the gains ``ln_ih_weight``/``ln_hh_weight``
``(G, hidden_size)`` and, for the LSTM, ``ln_cell_weight``/``ln_cell_bias``. A torch state dict
loads with ``strict=False`` (or use ``from_torch``); with ``ln=False`` every module equals its
torch.nn twin. The cell state ``c_t`` itself is carried un-normalized, as in the paper.

The GRU normalizes ``W_ih x`` and ``W_hh h`` per gate (r, z, n) with ``b_hn`` inside the reset
gate as torch: ``n = tanh(LN(W_in x)γ + b_in + r ⊙ (LN(W_hn h)γ + b_hn))``.

Speed: the input projection and its layer norm do not depend on ``h``; the sequence modules
compute them for all time steps as one batched matmul + one layer norm, and run only the
recurrent matmul, its layer norm and the gate arithmetic inside the time loop. The LSTM's and
the GRU's loops are fused further (:func:`_lstm_loop` says which loop runs): on the CPU with numba
installed, one ``torch.mm`` and one Numba kernel per step (:mod:`normkit.nn._recurrent_numba`);
else, for the LSTM, a hand-written ``autograd.Function`` on torch ops
(:mod:`normkit.nn._recurrent_fused`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from normkit import backends
from normkit._checks import check_positive
from normkit._optional import installed
from normkit.nn import _recurrent_core as core
from normkit.nn._recurrent_fused import fused_lstm_direction

__all__ = [
    "LayerNormGRU",
    "LayerNormGRUCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "LayerNormRNN",
    "LayerNormRNNCell",
]

LnSpec = bool | Collection[str]


def _sites(ln: LnSpec, mode: str, owner: str) -> frozenset[str]:
    allowed = core.SITES if mode == "LSTM" else core.SITES[:2]
    if ln is True:
        return frozenset(allowed)
    if ln is False:
        return frozenset()
    if isinstance(ln, str):
        raise TypeError(
            f"{owner}: ln must be True, False or a collection of site names from {allowed} "
            f"(got the string {ln!r}); wrap it, e.g. ln=({ln!r},)"
        )
    sites = frozenset(ln)
    bad = sites - set(allowed)
    if bad:
        raise ValueError(
            f"{owner}: unknown layer-norm site(s) {sorted(bad)}; expected a subset of {allowed}"
        )
    return sites


def _rnn_mode(nonlinearity: str) -> str:
    """torch's RNN mode name for ``nonlinearity`` (the Elman RNN's only two choices)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu' (got {nonlinearity!r})")
    return "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class _LNParams:
    """Create the parameters of one cell / one layer-direction with torch's names + a suffix."""

    def __init__(
        self,
        module: nn.Module,
        mode: str,
        input_size: int,
        hidden_size: int,
        bias: bool,
        sites: frozenset[str],
        factory: dict[str, Any],
    ) -> None:
        self.module, self.mode, self.factory = module, mode, factory
        self.g, self.i, self.h, self.bias, self.sites = (
            core.GATES[mode],
            input_size,
            hidden_size,
            bias,
            sites,
        )

    def make(self, suffix: str) -> None:
        g, h, m, fa = self.g, self.h, self.module, self.factory
        m.register_parameter(f"weight_ih{suffix}", nn.Parameter(torch.empty(g * h, self.i, **fa)))
        m.register_parameter(f"weight_hh{suffix}", nn.Parameter(torch.empty(g * h, h, **fa)))
        for name in ("bias_ih", "bias_hh"):
            p = nn.Parameter(torch.empty(g * h, **fa)) if self.bias else None
            m.register_parameter(f"{name}{suffix}", p)
        for site in ("ih", "hh"):
            p = nn.Parameter(torch.ones(g, h, **fa)) if site in self.sites else None
            m.register_parameter(f"ln_{site}_weight{suffix}", p)
        if self.mode == "LSTM":
            on = "cell" in self.sites
            m.register_parameter(
                f"ln_cell_weight{suffix}", nn.Parameter(torch.ones(h, **fa)) if on else None
            )
            m.register_parameter(
                f"ln_cell_bias{suffix}", nn.Parameter(torch.zeros(h, **fa)) if on else None
            )


def _reset(module: nn.Module, hidden_size: int) -> None:
    """torch's init for the torch-named tensors (U(−1/√H, 1/√H)); LN gains 1, LN shifts 0."""
    stdv = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    for name, p in module.named_parameters():
        if name.startswith("ln_"):
            if "_bias" in name:
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)
        else:
            nn.init.uniform_(p, -stdv, stdv)


def _numba_lstm_direction() -> Any:
    """The Numba LN-LSTM loop (imported on first use: numba is an optional extra)."""
    from normkit.nn._recurrent_numba import numba_lstm_direction as run

    return run


def _numba_gru_direction() -> Any:
    """The Numba LN-GRU loop (imported on first use: numba is an optional extra)."""
    from normkit.nn._recurrent_numba import numba_gru_direction as run

    return run


def _lstm_loop(backend: str, step: Tensor, mask: Tensor | None, steps: int) -> str:
    """Which LN-LSTM time loop runs: ``"numba"``, ``"torch"`` or ``"autograd"``.

    The rule, for one sequence of ``steps`` time steps (``step`` is a per-step ``(B, 4, H)``
    sample of the input's dtype and device):

    * float16/bfloat16, an empty batch, or while ``torch.export``/``torch.onnx`` trace: the
      autograd loop (per-step ops recorded by autograd, any backend; exported unrolled);
    * ``backend="auto"`` or ``"numba"`` on the CPU in float32/float64 with numba installed
      (and ``steps ≥ 1``), padded sequences (``PackedSequence``, ``mask``) included: the Numba
      loop (:mod:`normkit.nn._recurrent_numba`: per step one ``torch.mm`` and one kernel for
      all the rest, forward and backward);
    * otherwise, without padding, when the layer-norm backend resolves to ``"torch"`` for the
      per-step sample (``backend="torch"``, or ``"auto"`` without numba / off the CPU): the
      fused torch loop (:mod:`normkit.nn._recurrent_fused`: hand-written backward on torch ops);
    * otherwise (padding, or another backend: ``"reference"``, ``"triton"``…): the autograd
      loop with that backend's layer norm per step.

    The GRU takes its Numba loop exactly where this returns ``"numba"`` and the autograd loop
    otherwise (it has no torch-ops fused loop); the Elman RNN always runs the autograd loop. All
    loops compute the same function; they differ only in speed (``normkit bench --rnn``).
    """
    if step.dtype not in (torch.float32, torch.float64) or step.numel() == 0:
        return "autograd"
    if torch.compiler.is_exporting():  # torch.export / ONNX: per-step standard ops, unrolled
        return "autograd"
    if (
        backend in ("auto", "numba")
        and steps > 0
        and step.device.type == "cpu"
        and installed("numba")
    ):
        return "numba"
    if mask is None and backends.resolve("layer_norm", step, backend).name == "torch":
        return "torch"
    return "autograd"


def _check_float_input(x: Tensor, owner: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor input (got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(
            f"{owner} expects a floating-point input (got dtype {x.dtype}); convert it first, "
            f"e.g. x.float()"
        )


def _gather(
    module: nn.Module, mode: str, suffix: str, gates: int
) -> tuple[Tensor, Tensor | None, Tensor | None, core.StepParams]:
    """``(weight_ih, input-part bias (G,H), ln_ih gain, StepParams)`` of one cell/direction."""
    get = module._parameters.get
    w_ih, w_hh = get(f"weight_ih{suffix}"), get(f"weight_hh{suffix}")
    b_ih, b_hh = get(f"bias_ih{suffix}"), get(f"bias_hh{suffix}")
    assert w_ih is not None and w_hh is not None
    if b_ih is None or b_hh is None:
        in_bias, step_bias = None, None
    elif mode == "GRU":  # b_hn sits inside r ⊙ (...): keep all of b_hh in the recurrent part
        in_bias, step_bias = b_ih.view(gates, -1), b_hh.view(gates, -1)
    else:
        in_bias, step_bias = (b_ih + b_hh).view(gates, -1), None
    params = core.StepParams(
        weight_hh=w_hh,
        ln_hh_weight=get(f"ln_hh_weight{suffix}"),
        bias_hh=step_bias,
        ln_cell_weight=get(f"ln_cell_weight{suffix}"),
        ln_cell_bias=get(f"ln_cell_bias{suffix}"),
    )
    return w_ih, in_bias, get(f"ln_ih_weight{suffix}"), params


# =============================================================================== cells


class _LayerNormCellBase(nn.Module):
    mode: str = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        ln: LnSpec = True,
        eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive(type(self).__name__, input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.eps = eps
        self.backend = backend
        self.ln_sites = _sites(ln, self.mode, type(self).__name__)
        _LNParams(
            self,
            self.mode,
            input_size,
            hidden_size,
            bias,
            self.ln_sites,
            {"device": device, "dtype": dtype},
        ).make("")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's initialisation for ``weight_*``/``bias_*``; layer-norm gains 1, shifts 0."""
        _reset(self, self.hidden_size)

    def _state(self, input: Tensor, hx: Tensor | None, batch: int, name: str) -> Tensor:
        expected = (batch, self.hidden_size) if input.ndim == 2 else (self.hidden_size,)
        if hx is None:
            return input.new_zeros(expected)
        if tuple(hx.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: {name} must have shape {expected} for an input of shape "
                f"{tuple(input.shape)} (got {tuple(hx.shape)}); states are (batch, hidden_size), "
                f"or (hidden_size,) for an unbatched input"
            )
        return hx

    def _forward(
        self, input: Tensor, h: Tensor | None, c: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        _check_float_input(input, owner)
        if input.ndim not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: input must have shape (batch, {self.input_size}) or "
                f"({self.input_size},) (got {tuple(input.shape)}); input_size={self.input_size}"
            )
        batch = input.shape[0] if input.ndim == 2 else 1
        h = self._state(input, h, batch, "hx")
        if self.mode == "LSTM":
            c = self._state(input, c, batch, "cx")
        unbatched = input.ndim == 1
        x = input.unsqueeze(0) if unbatched else input
        h = h.unsqueeze(0) if unbatched else h
        c = c.unsqueeze(0) if (unbatched and c is not None) else c
        g = core.GATES[self.mode]
        ln = core.layer_norm_fn(
            x.new_empty(x.shape[0], g, self.hidden_size), self.hidden_size, self.eps, self.backend
        )
        w_ih, in_bias, ln_ih, params = _gather(self, self.mode, "", g)
        xg = core.input_part(x, w_ih, in_bias, ln_ih, g, ln)
        h, c = core.step(self.mode, xg, h, c, params, ln)
        if unbatched:
            h = h.squeeze(0)
            c = c.squeeze(0) if c is not None else None
        return h, c

    @classmethod
    def from_torch(cls, cell: nn.RNNCellBase, *, ln: LnSpec = True, **kwargs: Any) -> Any:
        """A layer-normalized cell carrying the weights of a torch.nn cell (LN gains 1, shifts 0).

        ``kwargs`` go to the constructor (``eps``, ``backend``); with ``ln=False`` the result
        computes exactly what ``cell`` computes.
        """
        p = cell.weight_ih
        extra: dict[str, Any] = (
            {"nonlinearity": cell.nonlinearity} if hasattr(cell, "nonlinearity") else {}
        )
        new = cls(
            cell.input_size,
            cell.hidden_size,
            cell.bias,
            device=p.device,
            dtype=p.dtype,
            ln=ln,
            **extra,
            **kwargs,
        )
        new.load_state_dict(cell.state_dict(), strict=False)
        return new

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + f", ln={sorted(self.ln_sites)}, eps={self.eps}"


class LayerNormRNNCell(_LayerNormCellBase):
    """Elman RNN cell with per-time-step layer norm; twin of :class:`torch.nn.RNNCell`.

    .. math:: h' = \\tanh\\big(\\mathrm{LN}(W_{ih} x)\\gamma_{ih} + b_{ih}
        + \\mathrm{LN}(W_{hh} h)\\gamma_{hh} + b_{hh}\\big)

    (``nonlinearity="relu"`` uses ReLU.) Ba, Kiros & Hinton 2016 (arXiv:1607.06450).
    Shapes: input ``(B, input_size)`` or ``(input_size,)``; ``hx`` ``(B, hidden_size)``;
    returns ``h'`` of ``hx``'s shape. ``ln``: ``True`` (all sites), ``False`` (none: equals
    ``nn.RNNCell``) or a subset of ``("ih", "hh")``.

    >>> cell = LayerNormRNNCell(10, 20)
    >>> h = cell(torch.randn(3, 10))
    >>> h = cell(torch.randn(3, 10), h)
    """

    mode = "RNN_TANH"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        ln: LnSpec = True,
        eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        self.nonlinearity = nonlinearity
        self.mode = _rnn_mode(nonlinearity)
        super().__init__(
            input_size, hidden_size, bias, device, dtype, ln=ln, eps=eps, backend=backend
        )

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._forward(input, hx, None)[0]


class LayerNormLSTMCell(_LayerNormCellBase):
    """LSTM cell with per-time-step layer norm (Ba, Kiros & Hinton 2016, arXiv:1607.06450, §6).

    .. math::
        (i, f, g, o) = \\mathrm{LN}(W_{ih} x)\\gamma_{ih} + \\mathrm{LN}(W_{hh} h)\\gamma_{hh}
            + b_{ih} + b_{hh}, \\quad
        c' = \\sigma(f) c + \\sigma(i) \\tanh(g), \\quad
        h' = \\sigma(o) \\tanh(\\mathrm{LN}(c')\\gamma_c + \\beta_c)

    layer norms per gate block. Twin of :class:`torch.nn.LSTMCell` (same parameter names and
    layout). Shapes: input ``(B, input_size)`` or ``(input_size,)``; ``hx = (h, c)`` each
    ``(B, hidden_size)``; returns ``(h', c')``. ``ln``: ``True``, ``False`` (equals
    ``nn.LSTMCell``) or a subset of ``("ih", "hh", "cell")``.

    >>> cell = LayerNormLSTMCell(10, 20)
    >>> h, c = cell(torch.randn(3, 10))
    >>> h, c = cell(torch.randn(3, 10), (h, c))
    """

    mode = "LSTM"

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        h, c = (None, None) if hx is None else hx
        h, c = self._forward(input, h, c)
        assert c is not None
        return h, c


class LayerNormGRUCell(_LayerNormCellBase):
    """GRU cell with per-time-step layer norm; twin of :class:`torch.nn.GRUCell`.

    .. math::
        r, z = \\sigma(\\mathrm{LN}(W_{i\\{r,z\\}} x)\\gamma + b_{i\\{r,z\\}}
            + \\mathrm{LN}(W_{h\\{r,z\\}} h)\\gamma + b_{h\\{r,z\\}}), \\quad
        n = \\tanh(\\mathrm{LN}(W_{in} x)\\gamma + b_{in} + r(\\mathrm{LN}(W_{hn} h)\\gamma + b_{hn})),
        \\quad h' = (1 - z) n + z h

    Ba, Kiros & Hinton 2016 (arXiv:1607.06450); layer norms per gate block. Shapes as
    :class:`torch.nn.GRUCell`. ``ln``: ``True``, ``False`` (equals ``nn.GRUCell``) or a
    subset of ``("ih", "hh")``.

    >>> cell = LayerNormGRUCell(10, 20)
    >>> h = cell(torch.randn(3, 10))
    """

    mode = "GRU"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._forward(input, hx, None)[0]


# =============================================================================== sequences


class _LayerNormRNNBase(nn.Module):
    mode: str = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        ln: LnSpec = True,
        eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive(owner, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        if not 0.0 <= dropout <= 1.0 or isinstance(dropout, bool):
            raise ValueError(f"{owner}: dropout must be a probability in [0, 1] (got {dropout})")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.eps = eps
        self.backend = backend
        self.ln_sites = _sites(ln, self.mode, owner)
        factory = {"device": device, "dtype": dtype}
        d = 2 if bidirectional else 1
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * d
            maker = _LNParams(self, self.mode, size, hidden_size, bias, self.ln_sites, factory)
            for suffix in self._suffixes(layer):
                maker.make(suffix)
        self.reset_parameters()

    def _suffixes(self, layer: int) -> Iterator[str]:
        yield f"_l{layer}"
        if self.bidirectional:
            yield f"_l{layer}_reverse"

    def reset_parameters(self) -> None:
        """torch's initialisation for ``weight_*``/``bias_*``; layer-norm gains 1, shifts 0."""
        _reset(self, self.hidden_size)

    @classmethod
    def from_torch(cls, rnn: nn.RNNBase, *, ln: LnSpec = True, **kwargs: Any) -> Any:
        """A layer-normalized twin carrying the weights of a ``nn.RNN``/``nn.LSTM``/``nn.GRU``.

        LN gains start at 1 and shifts at 0; with ``ln=False`` the result computes exactly what
        ``rnn`` computes. ``kwargs`` go to the constructor (``eps``, ``backend``).
        """
        if getattr(rnn, "proj_size", 0):
            raise ValueError(
                f"{cls.__name__}.from_torch: proj_size={rnn.proj_size} is not supported; "
                f"use an LSTM without projection"
            )
        p = next(rnn.parameters())
        extra: dict[str, Any] = (
            {"nonlinearity": rnn.nonlinearity} if hasattr(rnn, "nonlinearity") else {}
        )
        new = cls(
            input_size=rnn.input_size,
            hidden_size=rnn.hidden_size,
            num_layers=rnn.num_layers,
            bias=rnn.bias,
            batch_first=rnn.batch_first,
            dropout=rnn.dropout,
            bidirectional=rnn.bidirectional,
            device=p.device,
            dtype=p.dtype,
            ln=ln,
            **extra,
            **kwargs,
        )
        new.load_state_dict(rnn.state_dict(), strict=False)
        return new

    # ---------------------------------------------------------------- argument checks

    def _check_states(
        self, hx: Any, batch: int, unbatched: bool, input_shape: tuple[int, ...]
    ) -> list[Tensor] | None:
        owner = type(self).__name__
        if hx is None:
            return None
        lstm = self.mode == "LSTM"
        if lstm and not (isinstance(hx, tuple | list) and len(hx) == 2):
            raise TypeError(f"{owner}: hx must be a tuple (h_0, c_0) (got {type(hx).__name__})")
        if not lstm and not isinstance(hx, Tensor):
            raise TypeError(f"{owner}: hx must be a Tensor h_0 (got {type(hx).__name__})")
        states = list(hx) if lstm else [hx]
        layers = self.num_layers * (2 if self.bidirectional else 1)
        expected = (layers, self.hidden_size) if unbatched else (layers, batch, self.hidden_size)
        for name, s in zip(("h_0", "c_0"), states, strict=False):
            if tuple(s.shape) == expected:
                continue
            hint = ""
            if (
                not unbatched
                and s.ndim == 3
                and len(input_shape) == 3
                and s.shape[0] == layers
                and s.shape[2] == self.hidden_size
            ):
                other = input_shape[1] if self.batch_first else input_shape[0]
                if s.shape[1] == other:
                    layout = "(batch, seq, feature)" if not self.batch_first else "(seq, batch)"
                    hint = (
                        f"; the state's batch size matches the input's other leading dim — is "
                        f"the input {layout}? then pass batch_first={not self.batch_first}"
                    )
            raise ValueError(
                f"{owner}: {name} must have shape {expected} = (num_layers * num_directions, "
                f"{'' if unbatched else 'batch, '}hidden_size) for an input of shape "
                f"{input_shape} with batch_first={self.batch_first} (got {tuple(s.shape)})"
                f"{hint}"
            )
        return states

    # ---------------------------------------------------------------- forward

    def _run(self, input: Any, hx: Any) -> tuple[Tensor | PackedSequence, Tensor, Tensor | None]:
        owner = type(self).__name__
        packed = isinstance(input, PackedSequence)
        mask: Tensor | None = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # (T, B, I), rows in the caller's order
            unbatched = False
            input_shape = tuple(x.shape)
            mask = (torch.arange(x.shape[0])[:, None] < lengths[None, :]).unsqueeze(-1)
            mask = mask.to(x.device)
        else:
            _check_float_input(input, owner)
            if input.ndim not in (2, 3):
                raise ValueError(
                    f"{owner}: input must be 3-D {'(batch, seq, feature)' if self.batch_first else '(seq, batch, feature)'}"
                    f" (batch_first={self.batch_first}), 2-D (seq, feature) unbatched, or a "
                    f"PackedSequence (got shape {tuple(input.shape)})"
                )
            input_shape = tuple(input.shape)
            unbatched = input.ndim == 2
            if unbatched:
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
        _check_float_input(x, owner)
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: the input's feature size must equal input_size={self.input_size} "
                f"(got input of shape {input_shape}, feature size {x.shape[-1]}); check "
                f"input_size{'' if unbatched else ' and batch_first'}"
            )
        batch = x.shape[1]
        states = self._check_states(hx, batch, unbatched, input_shape)
        layers = self.num_layers * (2 if self.bidirectional else 1)
        lstm = self.mode == "LSTM"
        if states is None:
            zeros = x.new_zeros(layers, batch, self.hidden_size)
            h0, c0 = zeros, (zeros if lstm else None)
        else:
            h0 = states[0].unsqueeze(1) if unbatched else states[0]
            c0 = None
            if lstm:
                c0 = states[1].unsqueeze(1) if unbatched else states[1]
        g = core.GATES[self.mode]
        # The hoisted input-part layer norm sees (T, B, G, H), the per-step ones (B, G, H): the
        # auto rule picks a backend for each size.
        step_sample = x.new_empty(batch, g, self.hidden_size)
        ln_in = core.layer_norm_fn(
            x.new_empty(x.shape[0], batch, g, self.hidden_size),
            self.hidden_size,
            self.eps,
            self.backend,
        )
        ln = core.layer_norm_fn(step_sample, self.hidden_size, self.eps, self.backend)
        loop = _lstm_loop(self.backend, step_sample, mask, len(x)) if lstm else "autograd"
        # the GRU has no torch-ops fused loop: the Numba one under the same rule, else autograd
        gru_numba = (
            self.mode == "GRU" and _lstm_loop(self.backend, step_sample, mask, len(x)) == "numba"
        )
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(self._suffixes(layer)):
                idx = layer * (2 if self.bidirectional else 1) + d
                w_ih, in_bias, ln_ih, params = _gather(self, self.mode, suffix, g)
                c_init = None if c0 is None else c0[idx]
                if loop == "numba" and c_init is not None:
                    # the input projection and its layer norm are done inside (fused per step)
                    out, h, c = _numba_lstm_direction()(
                        layer_in,
                        w_ih,
                        ln_ih,
                        in_bias,
                        h0[idx],
                        c_init,
                        params.weight_hh,
                        params.ln_hh_weight,
                        params.ln_cell_weight,
                        params.ln_cell_bias,
                        self.eps,
                        d == 1,
                        mask,
                    )
                    outs.append(out)
                    hs.append(h)
                    cs.append(c)
                    continue
                if gru_numba:
                    out, h = _numba_gru_direction()(
                        layer_in,
                        w_ih,
                        ln_ih,
                        in_bias,
                        h0[idx],
                        params.weight_hh,
                        params.ln_hh_weight,
                        params.bias_hh,
                        self.eps,
                        d == 1,
                        mask,
                    )
                    outs.append(out)
                    hs.append(h)
                    continue
                xg = core.input_part(layer_in, w_ih, in_bias, ln_ih, g, ln_in)
                if loop == "torch" and c_init is not None:
                    out, h, c = fused_lstm_direction(
                        xg,
                        h0[idx],
                        c_init,
                        params.weight_hh,
                        params.ln_hh_weight,
                        params.ln_cell_weight,
                        params.ln_cell_bias,
                        self.eps,
                        d == 1,
                    )
                else:
                    out, h, c = core.run_direction(
                        self.mode, xg, h0[idx], c_init, params, ln, reverse=d == 1, mask=mask
                    )
                outs.append(out)
                hs.append(h)
                if c is not None:
                    cs.append(c)
            layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        h_n = torch.stack(hs)
        c_n = torch.stack(cs) if lstm else None
        output: Tensor | PackedSequence
        if packed:
            output = _repack(layer_in, input)
        elif unbatched:
            output = layer_in.squeeze(1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        else:
            output = layer_in.transpose(0, 1) if self.batch_first else layer_in
        return output, h_n, c_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", ln={sorted(self.ln_sites)}, eps={self.eps}"


def _repack(padded: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack the padded ``(T, B, *)`` output (rows in the caller's order) exactly as ``like``."""
    lengths = torch.zeros(padded.shape[1], dtype=torch.int64)
    bs = like.batch_sizes
    for t in range(bs.numel()):  # sorted row r is active at step t iff r < batch_sizes[t]
        lengths[: int(bs[t])] += 1
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices)
    data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
    return PackedSequence(data, bs, like.sorted_indices, like.unsorted_indices)


class LayerNormRNN(_LayerNormRNNBase):
    """Multi-layer Elman RNN with per-time-step layer norm; twin of :class:`torch.nn.RNN`.

    Each layer, direction and step computes
    ``h_t = tanh(LN(W_ih x_t)γ_ih + b_ih + LN(W_hh h_{t−1})γ_hh + b_hh)`` (``relu`` with
    ``nonlinearity="relu"``), Ba, Kiros & Hinton 2016 (arXiv:1607.06450). Arguments, shapes,
    ``PackedSequence`` support and outputs ``(output, h_n)`` are :class:`torch.nn.RNN`'s;
    ``ln`` is ``True``, ``False`` (equals ``nn.RNN``) or a subset of ``("ih", "hh")``.

    >>> rnn = LayerNormRNN(10, 20, num_layers=2, batch_first=True)
    >>> out, h_n = rnn(torch.randn(4, 7, 10))
    """

    mode = "RNN_TANH"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        ln: LnSpec = True,
        eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        self.nonlinearity = nonlinearity
        self.mode = _rnn_mode(nonlinearity)
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            ln=ln,
            eps=eps,
            backend=backend,
        )

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, h_n, _ = self._run(input, hx)
        return output, h_n


class LayerNormLSTM(_LayerNormRNNBase):
    """Multi-layer LSTM with per-time-step layer norm; twin of :class:`torch.nn.LSTM`.

    Per layer, direction and step (gate order i, f, g, o; layer norms per gate block):

    .. math::
        (i, f, g, o) = \\mathrm{LN}(W_{ih} x_t)\\gamma_{ih} + \\mathrm{LN}(W_{hh} h_{t-1})\\gamma_{hh}
            + b_{ih} + b_{hh}, \\;
        c_t = \\sigma(f) c_{t-1} + \\sigma(i)\\tanh(g), \\;
        h_t = \\sigma(o)\\tanh(\\mathrm{LN}(c_t)\\gamma_c + \\beta_c)

    Ba, Kiros & Hinton 2016 (arXiv:1607.06450, §6). Arguments (``input_size, hidden_size,
    num_layers, bias, batch_first, dropout, bidirectional``), ``PackedSequence`` input and the
    output ``(output, (h_n, c_n))`` with torch's shapes. ``ln``: ``True``, ``False`` (equals
    ``nn.LSTM`` with the same weights) or a subset of ``("ih", "hh", "cell")``. ``proj_size``
    is not supported. ``backend``: ``"auto"`` runs the time loop on fused Numba kernels on the
    CPU in float32/float64 when numba is installed (``"numba"`` asks for them, ``"torch"`` keeps
    to torch ops); the rule is :func:`_lstm_loop`'s.

    >>> lstm = LayerNormLSTM(10, 20, num_layers=2, bidirectional=True)
    >>> out, (h_n, c_n) = lstm(torch.randn(7, 4, 10))
    >>> out.shape, h_n.shape
    (torch.Size([7, 4, 40]), torch.Size([4, 4, 20]))
    """

    mode = "LSTM"

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        output, h_n, c_n = self._run(input, hx)
        assert c_n is not None
        return output, (h_n, c_n)


class LayerNormGRU(_LayerNormRNNBase):
    """Multi-layer GRU with per-time-step layer norm; twin of :class:`torch.nn.GRU`.

    Per layer, direction and step (gate order r, z, n; layer norms per gate block):
    ``r, z = σ(LN(W_i{r,z} x)γ + b_i + LN(W_h{r,z} h)γ + b_h)``,
    ``n = tanh(LN(W_in x)γ + b_in + r ⊙ (LN(W_hn h)γ + b_hn))``, ``h_t = (1 − z) n + z h``.
    Ba, Kiros & Hinton 2016 (arXiv:1607.06450). Arguments, shapes, ``PackedSequence`` and
    outputs ``(output, h_n)`` are :class:`torch.nn.GRU`'s; ``ln`` is ``True``, ``False``
    (equals ``nn.GRU``) or a subset of ``("ih", "hh")``.

    >>> gru = LayerNormGRU(10, 20, batch_first=True)
    >>> out, h_n = gru(torch.randn(4, 7, 10))
    """

    mode = "GRU"

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        output, h_n, _ = self._run(input, hx)
        return output, h_n
