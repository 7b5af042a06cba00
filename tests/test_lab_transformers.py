"""The transformer lab experiments' pieces: the tiny transformer, its training loop's divergence
cap, and Wortsman et al.'s LR-sensitivity metric."""

from __future__ import annotations

import math

import pytest
import torch

import normkit.nn as nkn
from normkit.examples.data import digits
from normkit.examples.models import TinyTransformer
from normkit.lab.experiments._transformer import LOSS_CAP, TransformerRun, train_transformer
from normkit.lab.experiments.transformers import _sensitivity


def test_tiny_transformer_wires_placement_norm_and_qk_norm():
    m = TinyTransformer(depth=2, placement="post", norm="dyt", qk_norm="layer")
    blocks = list(m.blocks)
    assert len(blocks) == 4 and all(b.placement == "post" for b in blocks)
    assert all(isinstance(b.norm, nkn.DyT) for b in blocks)
    assert all(a.qk is not None and a.qk.kind == "layer" for a in m.attentions())
    assert isinstance(m.final, torch.nn.Identity)  # Post-LN has no final norm
    assert isinstance(TinyTransformer(placement="pre").final, nkn.LayerNorm)


@pytest.fixture
def one_thread():
    """One intra-op thread, as the lab's workers run: tiny ops on two threads of a busy machine
    wait at every OpenMP barrier (10x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_learns_and_records_attention_logits(one_thread):
    torch.manual_seed(0)
    out = train_transformer(
        TinyTransformer(), digits(0, "sequence"), TransformerRun(60, 3e-3, warmup=6), seed=0
    )
    assert out["test_acc"] > 0.5 and out["final_loss"] < 1.5 and not out["diverged"]
    assert out["max_logit"] > 0


def test_a_diverged_run_counts_as_the_loss_cap(one_thread):
    torch.manual_seed(0)
    model = TinyTransformer()
    with torch.no_grad():
        model.head.weight.fill_(math.inf)
    out = train_transformer(model, digits(0, "sequence"), TransformerRun(5, 1e-3), seed=0)
    assert out["diverged"] and out["final_loss"] == LOSS_CAP and out["test_acc"] == 0.1


def test_lr_sensitivity_is_mean_excess_over_the_best_loss():
    recs = [{"arm": "a", "seed": 0, "final_loss": v} for v in (0.5, 0.2, 1.1)] + [
        {"arm": "b", "seed": 0, "final_loss": 0.3}
    ]
    assert _sensitivity(recs, "a", 0) == pytest.approx((0.3 + 0.0 + 0.9) / 3)
    assert _sensitivity(recs, "b", 0) == 0.0
