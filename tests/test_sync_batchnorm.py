"""SyncBatchNorm over torch.distributed: 2 gloo processes on CPU against single-process
torch.nn.BatchNorm on the concatenated batch (outputs, input grads, summed weight/bias grads,
running statistics), with unequal and empty per-rank batches, track_running_stats=False, eval
without collectives and a NaN batch on one rank. Plus the local fallback."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

import normkit.nn as nkn

F64 = torch.float64
C = 3
# name -> (batch sizes per rank, track_running_stats)
SCENARIOS = {
    "unequal": ((3, 5), True),
    "empty-rank": ((6, 0), True),
    "no-running-stats": ((2, 4), False),
}
STEPS = 2


def _data(sizes: tuple[int, ...], step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    n = sum(sizes)
    x = torch.randn(n, C, 2, 3, generator=g, dtype=F64) * 2 + 0.7
    gy = torch.randn(n, C, 2, 3, generator=g, dtype=F64)
    return x, gy


def _model(track: bool) -> nn.Module:
    bn = nn.BatchNorm2d(C, track_running_stats=track).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g, dtype=F64) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g, dtype=F64))
    return bn


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        results: dict[str, object] = {}
        for name, (sizes, track) in SCENARIOS.items():
            model = nkn.convert_sync_batchnorm(nn.Sequential(_model(track)))
            assert isinstance(model[0], nkn.SyncBatchNorm)
            lo = sum(sizes[:rank])
            steps = []
            for step in range(STEPS):
                x, gy = _data(sizes, step)
                x = x[lo : lo + sizes[rank]].clone().requires_grad_()
                model.zero_grad(set_to_none=True)
                y = model(x)
                (y * gy[lo : lo + sizes[rank]]).sum().backward()
                steps.append(
                    (y.detach(), x.grad, model[0].weight.grad.clone(), model[0].bias.grad.clone())
                )
            results[name] = (steps, {k: v.clone() for k, v in model.state_dict().items()})

        # eval: no collective at all, even if only this rank runs it (pytorch#48988)
        model = nkn.convert_sync_batchnorm(_model(True)).eval()

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("SyncBatchNorm communicated in eval mode")

        real = (dist.all_gather, dist.all_reduce)
        dist.all_gather = dist.all_reduce = forbidden  # type: ignore[assignment]
        try:
            x = torch.randn(4, C, 2, 2, dtype=F64)
            y = model(x)
        finally:
            dist.all_gather, dist.all_reduce = real
        results["eval"] = (x, y, {k: v.clone() for k, v in model.state_dict().items()})

        # NaN on one rank only: every rank skips the update alike (no diverging statistics)
        model = nkn.convert_sync_batchnorm(_model(True))
        x = torch.randn(4, C, 2, 2, dtype=F64)
        if rank == 1:
            x[0, 1, 0, 0] = float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            model(x)
        results["nan"] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp: Path = tmp_path_factory.mktemp("syncbn")
    mp.start_processes(
        _worker,
        args=(2, str(tmp / "store"), str(tmp)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.distributed
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_two_gloo_ranks_equal_single_process_bn_on_the_whole_batch(ranks, name: str):
    sizes, track = SCENARIOS[name]
    oracle = _model(track)
    for step in range(STEPS):
        x, gy = _data(sizes, step)
        x = x.requires_grad_()
        oracle.zero_grad(set_to_none=True)
        y = oracle(x)
        (y * gy).sum().backward()
        per_rank = [ranks[r][name][0][step] for r in range(2)]
        torch.testing.assert_close(torch.cat([p[0] for p in per_rank]), y.detach())
        torch.testing.assert_close(torch.cat([p[1] for p in per_rank]), x.grad)
        # weight/bias grads are local; their sum (what DDP all-reduces) is the global one
        torch.testing.assert_close(per_rank[0][2] + per_rank[1][2], oracle.weight.grad)
        torch.testing.assert_close(per_rank[0][3] + per_rank[1][3], oracle.bias.grad)
    for r in range(2):
        state = ranks[r][name][1]
        for k, v in oracle.state_dict().items():
            torch.testing.assert_close(state["0." + k], v, msg=f"rank {r}: {k}")


@pytest.mark.distributed
def test_eval_is_local_and_a_nan_batch_on_one_rank_skips_everywhere(ranks):
    for r in range(2):
        x, y, state = ranks[r]["eval"]
        oracle = _model(True).eval()
        torch.testing.assert_close(y, oracle(x))
        fresh = _model(True).state_dict()
        for k, v in state.items():
            assert torch.equal(v, fresh[k]), f"rank {r}: {k} moved in eval"
        for k, v in ranks[r]["nan"].items():
            assert torch.equal(v, fresh[k]), f"rank {r}: {k} moved on a NaN batch"


def test_local_fallback_warns_once_and_strict_raises(monkeypatch: pytest.MonkeyPatch):
    assert not dist.is_initialized()
    monkeypatch.setattr(nkn.SyncBatchNorm, "_warned_local", False)
    m, bn = nkn.SyncBatchNorm(C).double(), nn.BatchNorm2d(C).double()
    x = torch.randn(4, C, 2, 2, dtype=F64)
    with pytest.warns(RuntimeWarning, match="not initialized"):
        y = m(x)
    torch.testing.assert_close(y, bn(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)  # once only
    with pytest.raises(RuntimeError, match="init_process_group"):
        nkn.SyncBatchNorm(C, strict=True)(x)
    nkn.SyncBatchNorm(C, strict=True).eval()(x)  # eval never needs the group


def test_convert_sync_batchnorm_keeps_parameters_and_converts_norm_act():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        nkn.BatchNorm1d(4, axis=-1),
        nkn.BatchNormAct2d(4, act="gelu"),
        nkn.GhostBatchNorm2d(4),
    )
    w = model[1].weight
    x = torch.randn(4, 4, 3, 3)
    expect = copy.deepcopy(model[3])(x)  # BatchNormAct2d: BN then GELU, training mode
    converted = nkn.convert_sync_batchnorm(model)
    assert type(converted[1]) is nkn.SyncBatchNorm and converted[1].weight is w
    assert converted[2].axis == -1
    assert type(converted[3]) is nkn.SyncBatchNormAct2d and type(converted[3].act) is nn.GELU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # local fallback: no process group here
        torch.testing.assert_close(converted[3](x), expect)
    assert type(converted[4]) is nkn.GhostBatchNorm2d
    with pytest.warns(RuntimeWarning, match="stays local"):
        nkn.convert_sync_batchnorm(nn.Sequential(nkn.BatchRenorm2d(4)))
