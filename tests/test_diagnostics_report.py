"""Reports of normkit.diagnostics (rich table, PNG, self-contained HTML, CSV), the histogram
helper, the overhead bench's row format and the ``normkit doctor`` command."""

from __future__ import annotations

import base64
import csv
import io
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from normkit.cli import main
from normkit.diagnostics import Finding, render_findings, watch
from normkit.diagnostics._data import histogram as _histogram
from normkit.doctor import load_factory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recorded() -> tuple[object, dict[str, float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    with watch(model, every=1, hist_every=1) as rec:
        for _ in range(3):
            opt.zero_grad()
            model(x).sum().backward()
            oracle = {"2": model[2].weight.grad.norm().item() ** 2}
            oracle["2"] = math.sqrt(oracle["2"] + model[2].bias.grad.norm().item() ** 2)
            opt.step()
    return rec, oracle


def test_histogram_matches_torch_histc() -> None:
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(4096, generator=g), torch.randint(0, 5, (999,), generator=g).float()):
        lo, hi = torch.aminmax(x)
        ours = _histogram(x, lo, hi)
        ref = torch.histc(x, bins=40, min=float(lo), max=float(hi))
        assert torch.equal(ours.float(), ref)


def test_csv_rows_match_an_independent_oracle(recorded, tmp_path: Path) -> None:
    rec, oracle = recorded
    path = rec.to_csv(tmp_path / "stats.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    last = [r for r in rows if r["layer"] == "2" and int(r["step"]) == 2]
    assert len(last) == 1 and last[0]["kind"] == "Linear"
    assert float(last[0]["grad_norm"]) == pytest.approx(oracle["2"], rel=1e-5)
    assert {r["layer"] for r in rows} == {"0", "1", "2", "3"}
    assert sorted({int(r["step"]) for r in rows}) == [0, 1, 2]


def test_plot_writes_a_png(recorded, tmp_path: Path) -> None:
    from matplotlib.image import imread

    rec, _ = recorded
    path = rec.plot(tmp_path / "flow.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.shape[0] > 500 and img.shape[1] > 800


def test_html_is_self_contained(recorded, tmp_path: Path) -> None:
    rec, _ = recorded
    extra = Finding("bias-before-norm", "info", "measured <b>", "fix & done", layer="0")
    html = rec.to_html(tmp_path / "r.html", findings=[extra]).read_text()
    assert "src='http" not in html and "href=" not in html and "<script" not in html
    payload = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert payload is not None and base64.b64decode(payload.group(1))[:8] == PNG_MAGIC
    assert "measured &lt;b&gt;" in html and "fix &amp; done" in html  # escaped
    for layer in rec.layers:
        assert f"<td class=l>{layer}</td>" in html


def test_rich_output_names_every_finding() -> None:
    findings = [
        Finding("dead-relu", "warning", "62% dead", "lower the lr", layer="act"),
        Finding("exploding-gradients", "error", "NaN", "clip", layer="fc", step=3),
    ]
    buf = io.StringIO()
    render_findings(findings, console=Console(file=buf, width=200))
    out = buf.getvalue()
    assert out.index("exploding-gradients") < out.index("dead-relu")  # most severe first
    buf = io.StringIO()
    render_findings([], console=Console(file=buf, width=200))
    assert "no findings" in buf.getvalue()
    with pytest.raises(ValueError, match="severity"):
        Finding("x", "fatal", "m", "f")  # type: ignore[arg-type]


def test_overhead_bench_rows() -> None:
    from normkit.diagnostics.bench import run_diagnostics_bench

    def data() -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return torch.randn(96, 64, generator=g), torch.randint(0, 10, (96,), generator=g)

    tiny = {"tiny": (lambda: nn.Sequential(nn.Linear(64, 10), nn.ReLU()), data, 10)}
    rows = run_diagnostics_bench(True, reps=1, cases=tiny)
    assert len(rows) == 1
    r = rows[0]
    assert r["case"] == "tiny"
    assert r["recorded_steps_every1"] == 2 * 10  # warm-up block + one timed block, 10 steps each
    assert r["recorded_steps_every10"] == 2
    for k in (
        "ms_step_off",
        "ms_step_hooks_only",
        "ms_step_every1",
        "ms_step_every10",
        "ms_convert_per_record",
    ):
        assert r[k] > 0
    assert r["overhead_hooks_only_pct"] == pytest.approx(
        100 * (r["ms_step_hooks_only"] / r["ms_step_off"] - 1), rel=1e-3, abs=0.2
    )
    assert r["overhead_every1_pct"] == pytest.approx(
        100 * (r["ms_step_every1"] / r["ms_step_off"] - 1), rel=1e-3, abs=0.2
    )


def test_doctor_cli_default_model(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(["doctor", "--steps", "3", "--out", str(out)]) == 0
    assert (out / "gradient_flow.png").read_bytes()[:8] == PNG_MAGIC
    page = (out / "report.html").read_text()
    for figure in ("Gradient flow", "Normalization health", "Gradient noise", "Curvature"):
        assert f"<h2>{figure}</h2><img" in page, figure
    assert "top Hessian eigenvalue" in page and "signal-to-noise" in page
    with (out / "stats.csv").open() as fh:
        assert {int(r["step"]) for r in csv.DictReader(fh)} == {0, 1, 2}


def test_doctor_cli_finds_vanishing_gradients(tmp_path: Path, capsys) -> None:
    factory = tmp_path / "mymodel.py"
    factory.write_text(
        "from normkit.examples.models import deep_mlp\ndef build():\n    return deep_mlp(20, 16)\n"
    )
    code = main(
        [
            "doctor",
            "--model",
            f"{factory}:build",
            "--input-shape",
            "64",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1  # an error-severity finding
    out = capsys.readouterr().out
    assert "vanishing-gradients" in out and "missing-norm" in out


def test_doctor_random_data_and_bad_specs(tmp_path: Path) -> None:
    factory = tmp_path / "conv.py"
    factory.write_text(
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())\n"
    )
    args = ["doctor", "--model", f"{factory}:build", "--input-shape", "3,6,6", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    with pytest.raises(ValueError, match="module:factory"):
        load_factory("no_colon")
    with pytest.raises(ValueError, match="no attribute"):
        load_factory("normkit.examples.models:nope")
    with pytest.raises(ValueError, match="64 values"):
        main([*args, "--data", "digits", "--out", str(tmp_path / "p")])


def test_recorder_survives_a_backward_without_optimizer() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with watch(model) as rec:
        F.mse_loss(model(torch.randn(8, 4)), torch.zeros(8, 4)).backward()
    assert math.isnan(rec.series("update_ratio", ["0"])["0"][0])  # no optimizer step
    assert rec.series("grad_norm")["0"][0] == pytest.approx(
        math.sqrt(model[0].weight.grad.norm() ** 2 + model[0].bias.grad.norm() ** 2), rel=1e-5
    )
