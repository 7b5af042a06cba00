"""recalibrate_batchnorm: running statistics equal the exact statistics of the layer inputs over
all batches (oracle: torch's var/mean of the concatenated inputs captured by plain forward
hooks), for torch.nn and normkit batch norms, Keras-style BN (biased variance), masked BN,
instance norms with running statistics, across 2 gloo processes; modes restored, dropout off,
frozen layers and NaN batches left out."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

import normkit.nn as nkn
from normkit.nn.recalibrate import recalibrate_batchnorm

F64 = torch.float64


def _cnn(bn: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), bn(6), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(6, 4, 3, padding=1), bn(4), nn.ReLU(),
    ).double()  # fmt: skip


def _batches(n: int = 5, size: int = 4, seed: int = 1) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 5, 5, generator=g, dtype=F64) * 2 + 1 for _ in range(n)]


def _captured_inputs(model: nn.Module, batches: list[Tensor], kinds: tuple[type, ...]) -> dict:
    """Oracle: run the pass a recalibration makes (norms in train mode, the rest in eval mode)
    on a copy, keep every norm input, concatenate."""
    import copy

    ref = copy.deepcopy(model).eval()
    seen: dict[str, list[Tensor]] = {}
    for name, m in ref.named_modules():
        if isinstance(m, kinds):
            m.train()
            m.register_forward_hook(
                lambda mod, a, out, name=name: seen.setdefault(name, []).append(a[0])
            )
    with torch.no_grad():
        for b in batches:
            ref(b)
    return {k: torch.cat(v) for k, v in seen.items()}


@pytest.mark.parametrize("bn", [nn.BatchNorm2d, nkn.BatchNorm2d, nkn.BatchRenorm2d])
def test_running_stats_equal_the_statistics_of_all_inputs(bn):
    model = _cnn(bn)
    batches = _batches()
    inputs = _captured_inputs(model, batches, (bn,))
    model.train()
    report = recalibrate_batchnorm(model, batches, progress=False)
    assert model.training and model[1].training is not False  # modes restored (all train)
    for name in ("1", "5"):
        x = inputs[name]
        layer = model.get_submodule(name)
        torch.testing.assert_close(layer.running_mean, x.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, x.var((0, 2, 3)), rtol=1e-12, atol=1e-12)
        assert int(layer.num_batches_tracked) == len(batches)
    assert [r.name for r in report.layers] == ["1", "5"]
    assert report.layers[0].count == 5 * 4 * 25
    assert report.num_batches == 5


def test_differs_from_the_average_of_batch_variances_of_update_bn():
    """torch's swa_utils.update_bn averages per-batch variances; the exact result does not."""
    model = _cnn()
    batches = [b + 3 * i for i, b in enumerate(_batches())]  # batch means differ
    ref = _cnn()
    torch.optim.swa_utils.update_bn(batches, ref)
    recalibrate_batchnorm(model, batches, progress=False)
    torch.testing.assert_close(model[1].running_mean, ref[1].running_mean, rtol=1e-10, atol=1e-10)
    assert (model[1].running_var - ref[1].running_var).sum() > 0.5


def test_chunking_does_not_matter_and_num_batches_limits():
    whole = torch.cat(_batches(6, 4))
    a, b = _cnn(), _cnn()
    recalibrate_batchnorm(a, list(whole.split(4)), progress=False)
    recalibrate_batchnorm(b, list(whole.split([1, 7, 3, 9, 4])), progress=False)
    # the first BN's input does not depend on the batching (the conv is per sample)
    torch.testing.assert_close(a[1].running_mean, b[1].running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[1].running_var, b[1].running_var, rtol=1e-12, atol=1e-12)
    c = _cnn()
    r = recalibrate_batchnorm(c, iter(whole.split(4)), num_batches=2, progress=False)
    assert r.num_batches == 2
    torch.testing.assert_close(c[1].running_var, c[0](whole[:8]).var((0, 2, 3)))


def test_dropout_is_off_and_modes_are_restored():
    model = _cnn()
    model.eval()
    model[5].train()
    batches = _batches()
    inputs = _captured_inputs(model, batches, (nn.BatchNorm2d,))
    recalibrate_batchnorm(model, batches, progress=False)
    torch.testing.assert_close(model[5].running_var, inputs["5"].var((0, 2, 3)))
    assert [m.training for m in model] == [False] * 5 + [True, False]


def test_keras_bn_stores_the_biased_variance_and_masked_bn_skips_padding():
    torch.manual_seed(0)
    x = [torch.randn(4, 7, 3, dtype=F64) + 2 for _ in range(3)]
    kbn = nkn.BatchNormalization(dtype=F64)
    kbn(x[0])
    recalibrate_batchnorm(kbn, x, progress=False)
    allx = torch.cat(x).reshape(-1, 3)
    torch.testing.assert_close(kbn.running_var, allx.var(0, unbiased=False))

    bn = nkn.BatchNorm(3, axis=-1, dtype=F64)
    masks = [torch.arange(7) < torch.randint(1, 8, (4, 1)) for _ in x]
    recalibrate_batchnorm(
        bn, list(zip(x, masks, strict=True)), forward=lambda m, b: m(*b), progress=False
    )
    kept = torch.cat([xi[mi] for xi, mi in zip(x, masks, strict=True)])
    torch.testing.assert_close(bn.running_mean, kept.mean(0))
    torch.testing.assert_close(bn.running_var, kept.var(0))


@pytest.mark.parametrize("cls", [nn.InstanceNorm2d, nkn.InstanceNorm2d])
def test_instance_norm_gets_the_average_of_per_sample_statistics(cls):
    inorm = cls(3, track_running_stats=True, dtype=F64)
    x = _batches(3, 4)
    recalibrate_batchnorm(inorm, x, progress=False)
    allx = torch.cat(x)
    torch.testing.assert_close(inorm.running_mean, allx.mean((2, 3)).mean(0))
    torch.testing.assert_close(inorm.running_var, allx.var((2, 3)).mean(0))


def test_frozen_layers_nan_batches_and_unreached_layers():
    model = nn.Sequential(nkn.FrozenBatchNorm1d(3), nn.BatchNorm1d(3), nn.Identity()).double()
    unused = nn.BatchNorm1d(2)
    model.add_module("unused", unused)
    model.forward = lambda x: model[1](model[0](x))  # type: ignore[method-assign]
    frozen_before = model[0].running_var.clone()
    good = [torch.randn(8, 3, dtype=F64) for _ in range(3)]
    bad = torch.randn(8, 3, dtype=F64)
    bad[2, 1] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = recalibrate_batchnorm(model, [good[0], bad, good[1], good[2]], progress=False)
    torch.testing.assert_close(model[0].running_var, frozen_before)
    torch.testing.assert_close(model[1].running_var, model[0](torch.cat(good)).var(0))
    assert report.layers[0].skipped_batches == 1
    assert report.unreached == ("unused",)
    assert "not reached" in str(report)


def test_metric_before_and_after_and_bad_batches():
    model = _cnn()
    batches = _batches()
    x = torch.cat(batches)

    def metric(m: nn.Module) -> float:
        assert not m.training
        return float(m(x).mean().detach())

    r = recalibrate_batchnorm(model, batches, metric=metric, progress=False)
    assert r.metric_before is not None and r.metric_before != r.metric_after
    assert r.metric_after == pytest.approx(metric(model.eval()))
    with pytest.raises(TypeError, match="forward=lambda"):
        recalibrate_batchnorm(_cnn(), [object()], progress=False)
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_batchnorm(_cnn(), batches, num_batches=0)


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world
    )
    try:
        model = nn.Sequential(_cnn(), nn.InstanceNorm2d(4, track_running_stats=True).double())
        batches = _batches(6, 3)[rank::2] + ([torch.empty(0, 3, 5, 5, dtype=F64)] if rank else [])
        recalibrate_batchnorm(model, batches, progress=False)
        torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one_process_over_all_batches(tmp_path: Path):
    mp.start_processes(
        _worker,
        args=(2, str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    single = nn.Sequential(_cnn(), nn.InstanceNorm2d(4, track_running_stats=True).double())
    recalibrate_batchnorm(single, _batches(6, 3), progress=False)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for k, v in single.state_dict().items():
            if "running" in k:
                torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12, msg=k)
