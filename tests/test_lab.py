"""The lab: data, models, training loop, landscape probe, every experiment in a tiny
configuration, the report, resume and the CLI."""

from __future__ import annotations

import copy
import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normkit.cli import main
from normkit.examples.data import digits, long_range, tabular
from normkit.examples.models import ElmanRNN, make_norm
from normkit.lab import LabConfig, experiment_ids, get_experiment, run_lab, write_report
from normkit.lab import runner as lab_runner
from normkit.lab.config import config_hash
from normkit.lab.train import TrainSpec, accuracy, train
from normkit.lab.verdict import OUTCOMES, VERDICTS

FOUNDATION = [
    "speed-accuracy",
    "init",
    "learning-rate",
    "regularization",
    "placement",
    "small-batch",
    "smoothness",
    "gradient-flow",
    "resnet",
    "rnn-ln",
    "ln-vs-bn",
    "inference-fold",
    "data-scaling",
]


def _cfg(tmp_path: Path, only: tuple[str, ...], **kw) -> LabConfig:
    return LabConfig(tiny=True, only=only, seeds=2, out=tmp_path, jobs=1, progress=False, **kw)


# --------------------------------------------------------------------------- data


def test_digits_split_matches_sklearn():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(
        d.data, d.target, test_size=1 / 3, random_state=4, stratify=d.target
    )
    s = digits(4, "images")
    np.testing.assert_allclose(s.x_train.reshape(len(xtr), 64).numpy(), xtr / 16, rtol=1e-6)
    np.testing.assert_allclose(s.x_test.reshape(len(xte), 64).numpy(), xte / 16, rtol=1e-6)
    np.testing.assert_array_equal(s.y_train.numpy(), ytr)
    np.testing.assert_array_equal(s.y_test.numpy(), yte)
    seq = digits(4, "sequence")
    # row t of the sequence is pixel row t of the image
    np.testing.assert_array_equal(seq.x_test[:, 3].numpy(), s.x_test[:, 0, 3].numpy())
    assert digits(4, "vectors", n_train=100).n_train == 100


def test_tabular_and_generated_data():
    from sklearn.datasets import load_diabetes, load_wine

    wine = tabular("wine", 0)
    assert wine.num_classes == 3
    assert wine.x_train.shape[0] + wine.x_test.shape[0] == load_wine().data.shape[0]
    diab = tabular("diabetes", 0)
    assert diab.num_classes == 0
    raw = load_diabetes(scaled=False).target
    assert float(diab.y_train.max()) <= raw.max() and float(diab.y_train.min()) >= raw.min()
    lr = long_range(0, length=12, features=4, num_classes=4, n_train=64, n_test=32)
    # the label is the position of the one-hot code at step 0, nothing else
    assert torch.equal(lr.x_train[:, 0].argmax(dim=1), lr.y_train)
    with pytest.raises(ValueError, match="form"):
        digits(0, "pixels")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- models and training


def test_elman_rnn_matches_torch_rnn():
    torch.manual_seed(0)
    ours = ElmanRNN(8, 16, 10, norm="none")
    ref = nn.RNN(8, 16, batch_first=True, nonlinearity="tanh")
    with torch.no_grad():
        ref.weight_ih_l0.copy_(ours.wx.weight)
        ref.bias_ih_l0.copy_(ours.wx.bias)
        ref.weight_hh_l0.copy_(ours.wh.weight)
        ref.bias_hh_l0.zero_()
    x = torch.randn(5, 7, 8)
    _, h = ref(x)
    torch.testing.assert_close(ours(x), ours.head(h[0]))


def test_conv_layer_norm_is_layer_norm_over_chw():
    x = torch.randn(4, 6, 5, 5)
    got = make_norm("ln", 6, conv=True)(x)
    want = F.layer_norm(x, (6, 5, 5))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    simple = make_norm("ln-simple", 6)
    assert sum(p.numel() for p in simple.parameters()) == 0
    assert isinstance(make_norm("none", 3), nn.Identity)


def test_accuracy_counts_non_finite_rows_as_wrong():
    from sklearn.metrics import accuracy_score

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [float("nan"), 9.0], [1.0, float("inf")]])
    y = torch.tensor([0, 1, 1, 1])
    pred = [0, 1, -1, -1]  # the two non-finite rows can't be right
    assert accuracy(logits, y) == pytest.approx(accuracy_score(y.numpy(), pred))


def test_training_is_deterministic_and_learns():
    data = digits(0, "vectors")

    def run() -> tuple[list[float], float]:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        h = train(m, data, TrainSpec(steps=60, lr=0.5, eval_every=20), seed=0)
        return h.test_acc, h.final_test_acc

    a, b = run(), run()
    assert a == b
    assert a[1] > 0.5  # 60 SGD steps on digits beat chance (0.1) by far
    assert a[0][0] < 0.3  # step 0: an untrained net is near chance


def test_divergence_stops_training_and_keeps_metrics_finite():
    data = digits(0, "vectors")
    torch.manual_seed(0)
    # a deep linear net cannot die like a ReLU net: its weights blow up multiplicatively
    m = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10))
    h = train(m, data, TrainSpec(steps=50, lr=1e3), seed=0)
    assert h.diverged and h.steps_done < 50
    assert math.isfinite(h.final_test_acc) and math.isfinite(h.final_test_loss)
    assert h.final_test_acc == 0.0  # every output is non-finite: all count as wrong


def test_landscape_probe_matches_functional_call():
    from torch.func import functional_call

    from normkit.lab.experiments.smoothness import probe_landscape

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), make_norm("bn", 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    F.cross_entropy(model(x), y).backward()
    before = copy.deepcopy(model.state_dict())
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    etas = [0.1, 0.5]
    got = probe_landscape(model, x, y, etas)

    # oracle: a fresh copy, parameters moved by functional_call, autograd on the moved values
    twin = copy.deepcopy(model)
    params0 = {k: v.detach() for k, v in twin.named_parameters()}
    bufs = {k: v.clone() for k, v in twin.named_buffers()}
    gnorm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    losses, diffs = [], []
    for eta in etas:
        moved = {k: (params0[k] - eta * grads[k]).requires_grad_() for k in params0}
        loss = F.cross_entropy(functional_call(twin, {**moved, **bufs}, (x,)), y)
        g2 = torch.autograd.grad(loss, list(moved.values()))
        d = math.sqrt(
            sum(float(((grads[k] - g).double() ** 2).sum()) for k, g in zip(moved, g2, strict=True))
        )
        losses.append(loss.item())
        diffs.append(d)
    want = (
        max(losses) - min(losses),
        max(diffs),
        max(d / (e * gnorm) for d, e in zip(diffs, etas, strict=True)),
    )
    assert got == pytest.approx(want, rel=1e-4)
    # parameters, buffers and gradients are restored
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k])


# --------------------------------------------------------------------------- experiments


def test_registry_lists_the_foundation_experiments():
    ids = experiment_ids()
    assert set(FOUNDATION) <= set(ids)
    with pytest.raises(ValueError, match="unknown experiment"):
        get_experiment("nope")


@pytest.mark.parametrize("exp_id", experiment_ids())
def test_experiment_runs_tiny_and_is_well_formed(exp_id, tmp_path):
    exp = get_experiment(exp_id)
    (res,) = run_lab(_cfg(tmp_path, (exp_id,)))
    n_tasks = len(exp.tasks(exp.tiny, [0, 1]))
    assert len(res.records) == n_tasks
    assert {r["seed"] for r in res.records} == {0, 1}
    assert res.verdict in VERDICTS
    assert res.checks and any(c.check.primary for c in res.checks)
    for c in res.checks:
        assert c.outcome in OUTCOMES
        assert len(c.check.claimed) == len(c.check.baseline) == 2
        assert all(math.isfinite(v) for v in (c.mean_claimed, c.mean_baseline, c.se))
    assert res.table and all(row["n"] >= 1 for row in res.table)
    for row in res.table:
        for k, v in row.items():
            if "acc" in k and isinstance(v, float):
                assert 0.0 <= v <= 1.0, (k, v)
    assert exp.claim and exp.source and res.setup
    assert res.command == f"normkit lab --tiny --only {exp_id} --seeds 2"


# --------------------------------------------------------------------------- report and resume


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.imgs: list[str] = []
        self.ids: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag not in ("meta", "br"):
            self.stack.append(tag)
        if "id" in a:
            self.ids.append(a["id"])

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def test_report_renders_and_resume_skips_finished_work(tmp_path, monkeypatch):
    import base64

    ids = ("init", "learning-rate")
    cfg = _cfg(tmp_path, ids)
    results = run_lab(cfg)
    index = write_report(results, cfg, wall_seconds=1.0)
    p = _Collect()
    p.feed(index.read_text())
    assert not p.errors and not p.stack
    assert set(ids) <= set(p.ids)
    assert len(p.imgs) == len(ids)
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "results.json").read_text())
    assert [e["id"] for e in data["experiments"]] == list(ids)
    for r in results:
        assert (tmp_path / f"{r.id}.png").read_bytes()[:4] == b"\x89PNG"
        with (tmp_path / f"{r.id}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(r.table)
        assert float(rows[0]["final_test_acc"]) == pytest.approx(r.table[0]["final_test_acc"])

    # a second run loads everything from the cache: no task runs
    def boom(*a, **k):
        raise AssertionError("a cached task was run again")

    monkeypatch.setattr(lab_runner, "run_task", boom)
    again = run_lab(cfg)
    assert all(r.cached for r in again)
    assert [r.records for r in again] == [r.records for r in results]


def test_resume_runs_only_unfinished_tasks(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, ("init",))
    exp = get_experiment("init")
    full = run_lab(cfg)[0]
    h = config_hash("init", exp.version, json.loads(json.dumps(dict(exp.tiny))), [0, 1])
    cache = tmp_path / "cache" / f"init-{h}.json"
    assert cache.exists()
    # simulate an interrupted run: keep 3 finished tasks in the partial file
    cache.unlink()
    partial = cache.with_name(f"init-{h}.partial.jsonl")
    partial.write_text("\n".join(json.dumps(r) for r in full.records[:3]) + "\n")
    calls = []
    real = lab_runner.run_task

    def counting(exp_id, params, task):
        calls.append(task)
        return real(exp_id, params, task)

    monkeypatch.setattr(lab_runner, "run_task", counting)
    resumed = run_lab(cfg)[0]
    assert len(calls) == len(full.records) - 3
    strip = [{k: v for k, v in r.items() if not k.startswith("_")} for r in full.records]
    assert [{k: v for k, v in r.items() if not k.startswith("_")} for r in resumed.records] == strip
    assert not partial.exists()


def test_config_hash_tracks_params_seeds_and_version():
    base = config_hash("x", 1, {"a": 1}, [0, 1])
    assert base == config_hash("x", 1, {"a": 1}, [0, 1])
    assert (
        len(
            {
                base,
                config_hash("x", 2, {"a": 1}, [0, 1]),
                config_hash("x", 1, {"a": 2}, [0, 1]),
                config_hash("x", 1, {"a": 1}, [0, 1, 2]),
            }
        )
        == 4
    )


def test_worker_processes_give_the_same_records(tmp_path):
    one = run_lab(_cfg(tmp_path / "a", ("init",)))[0]
    two = run_lab(
        LabConfig(tiny=True, only=("init",), seeds=2, out=tmp_path / "b", jobs=2, progress=False)
    )[0]

    def strip(rs):
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rs]

    assert strip(one.records) == strip(two.records)


def test_single_thread_survives_numba_kernels():
    """A numba kernel picked by backend="auto" must not bring back more torch threads."""
    numba = pytest.importorskip("numba")
    import normkit.nn as nkn

    old = lab_runner._set_threads(1)
    try:
        bn = nkn.BatchNorm1d(256).eval()
        with torch.no_grad():
            bn(torch.randn(2048, 256))  # large enough for the numba backend when it is there
        assert torch.get_num_threads() == 1
        assert numba.get_num_threads() == 1
    finally:
        lab_runner._set_threads(old)


# --------------------------------------------------------------------------- CLI


def test_cli_list_and_run(tmp_path, capsys):
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in FOUNDATION)
    rc = main(
        ["lab", "--tiny", "--only", "init", "--seeds", "2", "--jobs", "1", "--out", str(tmp_path)]
    )
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "index.html").exists()
    with pytest.raises(ValueError, match="at least 2"):
        LabConfig(seeds=1)
    with pytest.raises(ValueError, match="unknown experiment"):
        run_lab(_cfg(tmp_path, ("nope",)))
