"""``normkit bench --rnn``: layer-normalized LSTM/GRU training step (forward + backward).

Case: batch 32, sequence 128, input 256, hidden 256, float32, one layer (``--quick``: sequence
32). Rows, each the median wall time of forward + ``backward()`` of ``output.sum()``:

* ``nn.LSTM`` / ``nn.GRU`` — torch's fused C++ RNN, **no** layer norm (the speed floor);
* ``python-loop LN`` — the straightforward LN-LSTM people write: per step ``nn.Linear`` on
  ``x_t`` and ``h``, one ``nn.LayerNorm`` per gate and site, gate arithmetic, all under autograd;
* ``normkit autograd loop`` — normkit's math with the input projection + its layer norm hoisted
  out of the loop (one batched op), the per-step part recorded by autograd;
* ``normkit TorchScript loop`` — the same loop compiled by ``torch.jit.script`` (deprecated in
  torch ≥ 2.9; measured for comparison only, normkit does not ship it);
* ``normkit fused (torch ops)`` — ``LayerNormLSTM(backend="torch")``: the fused
  ``autograd.Function`` (hand-written backward, batched weight gradients) on torch ops, ~8
  small ops per step forward and ~20 backward;
* ``normkit autograd loop (torch ops)`` (GRU) — ``LayerNormGRU(backend="torch")``: hoisted
  input part, per-step ops recorded by autograd;
* ``normkit LayerNormLSTM (…)`` / ``LayerNormGRU (…)`` — the shipped module with the default
  ``backend="auto"``; the row names the loop it runs (``numba`` where numba is installed: one
  ``torch.mm`` and one fused Numba kernel per step, forward and backward).

Implementations are timed round-robin (one call of each per round), so load changes on a shared
machine hit every row alike; ``ms`` is the median, ``min ms`` the fastest round. ``vs torch`` is
the median over the ``nn.*`` row's, ``vs python loop`` the python-loop median over this row's
(a speed-up). Compare rows of one run only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import normkit.nn as nkn
from normkit.bench._registry import register_suite
from normkit.bench.timing import measure_interleaved
from normkit.nn import _recurrent_core as core

__all__ = ["run_rnn_bench"]


class _PythonLoopLNLSTM(nn.Module):
    """The straightforward LN-LSTM (per-step projections, one LayerNorm per gate and site)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)
        self.ln_ih = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(4))
        self.ln_hh = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(4))
        self.ln_c = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[1], self.hidden_size)
        c = torch.zeros_like(h)
        outs = []
        for t in range(x.shape[0]):
            a, b = self.ih(x[t]).chunk(4, 1), self.hh(h).chunk(4, 1)
            i, f, g, o = (self.ln_ih[k](a[k]) + self.ln_hh[k](b[k]) for k in range(4))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
            outs.append(h)
        return torch.stack(outs)


def _scripted_lstm_loop() -> Callable[..., Tensor]:
    """normkit's per-step LN-LSTM loop compiled with TorchScript (torch.layer_norm inside)."""

    def loop(
        xg: Tensor, w_hh: Tensor, g_hh: Tensor, w_c: Tensor, b_c: Tensor, h: Tensor, c: Tensor
    ) -> Tensor:
        hidden = h.shape[1]
        outs: list[Tensor] = []
        for t in range(xg.shape[0]):
            a = torch.mm(h, w_hh.t()).view(h.shape[0], 4, hidden)
            gates = torch.addcmul(xg[t], torch.layer_norm(a, [hidden]), g_hh)
            s = torch.sigmoid(gates)
            c = torch.addcmul(s[:, 1] * c, s[:, 0], torch.tanh(gates[:, 2]))
            h = s[:, 3] * torch.tanh(torch.layer_norm(c, [hidden], w_c, b_c))
            outs.append(h)
        return torch.stack(outs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(loop)


def _fwd_bwd(run: Callable[[], Tensor], params: list[Tensor]) -> Callable[[], None]:
    sync = torch.cuda.synchronize if params[0].is_cuda else (lambda: None)

    def step() -> None:
        for p in params:
            p.grad = None
        run().sum().backward()
        sync()

    return step


def run_rnn_bench(
    quick: bool, reps: int | None = None, *, device: str = "cpu"
) -> list[dict[str, Any]]:
    """Time LN-LSTM/LN-GRU forward+backward against ``nn.LSTM``/``nn.GRU`` and a Python loop.

    ``device="cuda"`` times the same rows on a GPU (torch.nn uses cuDNN there).
    Returns one row per implementation: ``case``, ``impl``, ``ms`` (median), ``min ms``,
    ``vs torch`` (time / torch.nn's, no LN) and ``vs python loop`` (python-loop time / this).
    """
    batch, seq, size = 32, (32 if quick else 128), 256
    reps = reps or (5 if quick else 15)
    torch.manual_seed(0)
    x = torch.randn(seq, batch, size, device=device, requires_grad=True)
    rows: list[dict[str, Any]] = []
    case = f"B={batch} T={seq} H={size} fwd+bwd"

    lstm = nn.LSTM(size, size, device=device)
    ours = nkn.LayerNormLSTM(size, size, device=device)
    ours_torch = nkn.LayerNormLSTM(size, size, device=device, backend="torch")
    ours_torch.load_state_dict(ours.state_dict())
    step = x.new_empty(batch, core.GATES["LSTM"], size)
    shipped = nkn.recurrent._lstm_loop(ours.backend, step, None, seq)
    naive = _PythonLoopLNLSTM(size, size).to(device)
    g = core.GATES["LSTM"]
    ln = core.layer_norm_fn(x, size, ours.eps, "torch")
    w_ih, in_bias, ln_ih, params = nkn.recurrent._gather(ours, "LSTM", "_l0", g)

    def autograd_loop() -> Tensor:
        xg = core.input_part(x, w_ih, in_bias, ln_ih, g, ln)
        h0 = x.new_zeros(batch, size)
        return core.run_direction("LSTM", xg, h0, h0, params, ln)[0]

    script = _scripted_lstm_loop()

    def scripted() -> Tensor:
        xg = core.input_part(x, w_ih, in_bias, ln_ih, g, ln)
        h0 = x.new_zeros(batch, size)
        assert params.ln_hh_weight is not None and params.ln_cell_weight is not None
        return script(
            xg,
            params.weight_hh,
            params.ln_hh_weight,
            params.ln_cell_weight,
            params.ln_cell_bias,
            h0,
            h0,
        )

    lstm_rows = [
        ("nn.LSTM (fused C++, no LN)", lambda: lstm(x)[0], list(lstm.parameters())),
        ("python-loop LN-LSTM", lambda: naive(x), list(naive.parameters())),
        ("normkit autograd loop", autograd_loop, list(ours.parameters())),
        ("normkit TorchScript loop", scripted, list(ours.parameters())),
        ("normkit fused (torch ops)", lambda: ours_torch(x)[0], list(ours_torch.parameters())),
        (f"normkit LayerNormLSTM ({shipped})", lambda: ours(x)[0], list(ours.parameters())),
    ]
    gru = nn.GRU(size, size, device=device)
    ours_gru = nkn.LayerNormGRU(size, size, device=device)
    gru_torch = nkn.LayerNormGRU(size, size, device=device, backend="torch")
    gru_torch.load_state_dict(ours_gru.state_dict())
    gru_step = x.new_empty(batch, core.GATES["GRU"], size)
    gru_shipped = nkn.recurrent._lstm_loop(ours_gru.backend, gru_step, None, seq)
    gru_shipped = "numba" if gru_shipped == "numba" else "autograd loop"
    gru_rows = [
        ("nn.GRU (fused C++, no LN)", lambda: gru(x)[0], list(gru.parameters())),
        (
            "normkit autograd loop (torch ops)",
            lambda: gru_torch(x)[0],
            list(gru_torch.parameters()),
        ),
        (
            f"normkit LayerNormGRU ({gru_shipped})",
            lambda: ours_gru(x)[0],
            list(ours_gru.parameters()),
        ),
    ]
    for model, impls in (("LSTM", lstm_rows), ("GRU", gru_rows)):
        calls = {name: (_fwd_bwd(run, [x, *ps]), None) for name, run, ps in impls}
        times = measure_interleaved(calls, reps=reps, warmup=2)
        base = next(iter(times.values())).median
        loop = times.get("python-loop LN-LSTM")
        for name, t in times.items():
            rows.append(
                {
                    "case": f"{model} {case}",
                    "impl": name,
                    "ms": round(t.median * 1e3, 2),
                    "min ms": round(t.min * 1e3, 2),
                    "vs torch": round(t.median / base, 2),
                    "vs python loop": round(loop.median / t.median, 2) if loop else "",
                    "device": device if device != "cpu" else f"cpu×{torch.get_num_threads()}",
                }
            )
    return rows


register_suite(
    "rnn",
    run_rnn_bench,
    "LN-LSTM/LN-GRU fwd+bwd (B=32, T=128, H=256) vs nn.LSTM/nn.GRU and a Python-loop LN-LSTM",
)
