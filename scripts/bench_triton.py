"""GPU benchmark of the triton backend vs torch eager (LayerNorm/RMSNorm, fwd and fwd+bwd).

Run on a CUDA machine: ``python scripts/bench_triton.py [--csv out.csv]``. Reports median ms
(``triton.testing.do_bench``), GB/s counting the bytes each pass must move (fwd: read x, write y;
fwd+bwd: additionally read x and dy, write dx), % of a device copy measured in the same run, and
the speedup over torch eager.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from triton.testing import do_bench

import normkit.functional as NF


def _fns(op: str, n: int, w: Tensor, b: Tensor) -> tuple[Callable, Callable]:
    if op == "layer_norm":
        return (
            lambda x: F.layer_norm(x, (n,), w, b),
            lambda x: NF.layer_norm(x, (n,), w, b, backend="triton"),
        )
    return (
        lambda x: F.rms_norm(x, (n,), w, 1e-6),
        lambda x: NF.rms_norm(x, (n,), w, 1e-6, backend="triton"),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for m, n in ((4096, 4096), (16384, 1024), (512, 8192), (32768, 4096)):
            x = torch.randn(m, n, device="cuda", dtype=dtype)
            w = torch.ones(n, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.zeros(n, device="cuda", dtype=dtype, requires_grad=True)
            dy = torch.randn_like(x)
            nbytes = x.numel() * x.element_size()
            dst = torch.empty_like(x)
            copy_gbs = 2 * nbytes / do_bench(lambda dst=dst, x=x: dst.copy_(x)) / 1e6
            for op in ("layer_norm", "rms_norm"):
                eager, ours = _fns(op, n, w, b)
                with torch.no_grad():
                    t_e = do_bench(lambda eager=eager, x=x: eager(x))
                    t_o = do_bench(lambda ours=ours, x=x: ours(x))
                xg = x.detach().requires_grad_()
                tb_e = do_bench(
                    lambda e=eager, xg=xg, dy=dy: e(xg).backward(dy), grad_to_none=[xg, w, b]
                )
                tb_o = do_bench(
                    lambda o=ours, xg=xg, dy=dy: o(xg).backward(dy), grad_to_none=[xg, w, b]
                )
                for direction, te, to, moved in (("fwd", t_e, t_o, 2), ("fwd+bwd", tb_e, tb_o, 5)):
                    gbs = moved * nbytes / to / 1e6
                    rows.append(
                        {
                            "op": op,
                            "shape": f"{m}x{n}",
                            "dtype": str(dtype).removeprefix("torch."),
                            "direction": direction,
                            "torch_ms": round(te, 4),
                            "triton_ms": round(to, 4),
                            "triton_GBps": round(gbs),
                            "pct_of_copy": round(100 * gbs / copy_gbs, 1),
                            "speedup_vs_torch": round(te / to, 2),
                        }
                    )
                    print(rows[-1], flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)


if __name__ == "__main__":
    main()
