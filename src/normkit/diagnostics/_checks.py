"""``check_model``: static and one-batch checks for normalization pitfalls."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normkit._stats import moments
from normkit.diagnostics._findings import Finding, sort_findings
from normkit.diagnostics._modules import (
    is_bn_like,
    is_depth_layer,
    is_norm_like,
    leaf_modules,
)
from normkit.nn import catalog

__all__ = ["check_model"]

_DEEP_PLAIN = 10  # depth layers from which a net without any norm layer is called deep


def _removes_channel_bias(m: nn.Module) -> bool:
    """Norms that subtract a per-channel mean, making a per-channel bias before them a no-op:
    batch norms (frozen ones too) and instance norms (:func:`normkit.nn.catalog.family`)."""
    return catalog.family(m) in ("batch", "frozen_batch", "instance")


def _out_features(m: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features"):
        if isinstance(v := getattr(m, attr, None), int):
            return v
    return None


def _num_features(m: nn.Module) -> int | None:
    if isinstance(v := getattr(m, "num_features", None), int):
        return v
    rm = getattr(m, "running_mean", None)
    return rm.numel() if isinstance(rm, Tensor) else None


def _matches(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _is_dropout(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.dropout._DropoutNd) and float(getattr(m, "p", 0)) > 0


def _short(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (" …" if len(names) > 5 else "")


def _convention(m: nn.Module) -> str:
    conv = getattr(m, "momentum_convention", None) or getattr(m, "convention", None)
    return conv if conv in ("torch", "keras") else "torch"


class _Trace:
    """Runs the example once (eval mode, no_grad) recording which leaf produced each norm input
    and the batch moments every BN-like layer sees."""

    def __init__(self, model: nn.Module, leaves: list[tuple[str, nn.Module]]) -> None:
        self.model = model
        self.leaves = leaves
        self.order: list[str] = []
        self.producer_of: dict[str, str | None] = {}
        self.bn_inputs: dict[str, tuple[tuple[int, ...], Tensor, Tensor, int]] = {}
        self._produced: dict[int, tuple[str, Tensor]] = {}

    def run(self, example: Any) -> None:
        handles = []
        for name, m in self.leaves:
            handles.append(m.register_forward_pre_hook(self._pre(name, m)))
            handles.append(m.register_forward_hook(self._post(name)))
        modes = {m: m.training for m in self.model.modules()}
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            self.model.eval()
            with torch.no_grad():
                if isinstance(example, Mapping):
                    self.model(**example)
                elif isinstance(example, (tuple, list)):
                    self.model(*example)
                else:
                    self.model(example)
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.training = mode
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            self._produced.clear()

    def _pre(self, name: str, m: nn.Module) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args and isinstance(args[0], Tensor) else None
            if x is None:
                return
            hit = self._produced.get(id(x))
            self.producer_of[name] = hit[0] if hit is not None and hit[1] is x else None
            if is_bn_like(m) and x.is_floating_point() and x.ndim >= 2:
                axis = int(getattr(m, "axis", 1)) % x.ndim
                dims = [d for d in range(x.ndim) if d != axis]
                mean, var = moments(x.detach(), dims)
                self.bn_inputs[name] = (tuple(x.shape), mean, var, x.numel() // x.shape[axis])

        return hook

    def _post(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in self.order:
                self.order.append(name)
            if isinstance(output, Tensor):
                self._produced[id(output)] = (name, output)

        return hook


def check_model(
    model: nn.Module,
    example_input: Any = None,
    *,
    mismatch_threshold: float = 1.0,
) -> list[Finding]:
    """Static and one-batch checks for normalization pitfalls; findings, most severe first.

    Static (always): ``bias-before-norm`` (a conv/linear with a bias right before a BatchNorm/
    InstanceNorm, which subtracts the per-channel mean and so cancels the bias: redundant
    parameters), ``bn-momentum-convention`` (momentum > 0.5 in a torch-convention BN — the new
    batch gets weight ``momentum``, so 0.99 is Keras' convention and torch's 0.01),
    ``bn-never-updated`` (an eval-mode BN with ``num_batches_tracked == 0`` normalizes with the
    initial mean 0 / var 1), ``bn-nonfinite-stats`` (NaN/Inf in the running stats),
    ``frozen-bn-updates`` (BN whose affine parameters are frozen but which is in train mode, so
    its running stats still move and it still normalizes with batch stats), ``dropout-before-bn``
    (dropout right before a BN shifts the variance between train and eval; Li et al. 2019,
    arXiv:1801.05134), ``missing-norm`` (≥ 10 conv/linear layers and no normalization layer).

    With ``example_input`` (a tensor, a tuple of positional args or a dict of keyword args) the
    model runs once in eval mode under ``no_grad`` (modes and buffers restored afterwards):
    "right before" follows the actual data flow instead of the registration order, a train-mode
    BN seeing batch size 1 (``bn-batch-size-1``: one value per channel is an error, per-image
    statistics a warning) is reported, and so is ``bn-eval-mismatch``: running statistics far
    from the example's batch statistics (median over channels of |μ_batch − μ_running|/σ_running
    > ``mismatch_threshold``, or of the variance ratio outside [1/4, 4]).

    BN-like layers are found by duck typing (``running_mean``, ``running_var``, ``momentum``,
    ``num_batches_tracked``), so torch.nn, normkit and user layers are all covered.

    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> [f.code for f in check_model(model, torch.randn(8, 3, 16, 16))]
    ['bias-before-norm']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_model expects a torch.nn.Module (got {type(model).__name__})")
    leaves = leaf_modules(model)
    modules = dict(model.named_modules())
    findings: list[Finding] = []
    trace: _Trace | None = None
    if example_input is not None:
        trace = _Trace(model, leaves)
        trace.run(example_input)

    # ---- pairs "A right before B": data flow when traced, registration order otherwise
    if trace is not None:
        pairs = [(p, n) for n, p in trace.producer_of.items() if p is not None]
    else:
        names = [n for n, _ in leaves]
        pairs = list(itertools.pairwise(names))
    biased, dropped = [], []
    for prev, nxt in pairs:
        a, b = modules[prev], modules[nxt]
        if (
            _removes_channel_bias(b)
            and is_depth_layer(a)
            and getattr(a, "bias", None) is not None
            and _matches(_out_features(a), _num_features(b))
        ):
            biased.append((prev, nxt))
        if is_bn_like(b) and _is_dropout(a):
            dropped.append((prev, nxt))
    if biased:
        findings.append(
            Finding(
                "bias-before-norm",
                "info",
                f"{len(biased)} conv/linear layer(s) with a bias feed a norm that subtracts the "
                f"per-channel mean, cancelling the bias: {_short([p for p, _ in biased])} "
                f"(→ {_short([n for _, n in biased])}); redundant parameters and work",
                "construct them with bias=False (the norm's own shift β does the job)",
                layer=biased[0][0],
            )
        )
    if dropped:
        findings.append(
            Finding(
                "dropout-before-bn",
                "warning",
                f"dropout right before BatchNorm: {_short([f'{p} → {n}' for p, n in dropped])}. "
                "Dropout scales the variance differently in train and eval, so the running "
                "variance BN learned does not match what it sees at test time (variance shift, "
                "Li et al. 2019)",
                "move dropout after the last BatchNorm (e.g. before the classifier), or use a "
                "variance-stable dropout (Gaussian dropout / small p)",
                layer=dropped[0][1],
            )
        )

    # ---- BN-like layers one by one
    bns = [(n, m) for n, m in modules.items() if is_bn_like(m)]
    for name, m in bns:
        momentum = getattr(m, "momentum", None)
        if isinstance(momentum, (int, float)) and not isinstance(momentum, bool):
            conv = _convention(m)
            bad = momentum > 0.5 if conv == "torch" else momentum < 0.5
            if bad:
                other = round(1 - momentum, 10)
                findings.append(
                    Finding(
                        "bn-momentum-convention",
                        "warning",
                        f"{name!r} ({type(m).__name__}) has momentum={momentum:g} in the "
                        f"{conv} convention, where the new batch gets weight "
                        f"{momentum if conv == 'torch' else other:g}: the running stats are "
                        "little more than the last batch. This looks like the "
                        f"{'Keras' if conv == 'torch' else 'torch'} convention",
                        f"use momentum={other:g} (torch's m = 1 − Keras' m)",
                        layer=name,
                        value=float(momentum),
                    )
                )
        rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        nbt = getattr(m, "num_batches_tracked", None)
        if isinstance(rm, Tensor) and isinstance(rv, Tensor):
            if not (bool(torch.isfinite(rm).all()) and bool(torch.isfinite(rv).all())):
                findings.append(
                    Finding(
                        "bn-nonfinite-stats",
                        "error",
                        f"{name!r} has NaN/Inf in its running statistics; every eval output "
                        "through it is NaN",
                        "reset them (module.reset_running_stats()) and re-estimate them on "
                        "clean data; find the batch that produced NaN (normkit BatchNorm's "
                        "nan_policy='skip' keeps such batches out of the running stats)",
                        layer=name,
                    )
                )
            elif isinstance(nbt, Tensor) and int(nbt) == 0 and not m.training:
                findings.append(
                    Finding(
                        "bn-never-updated",
                        "error",
                        f"{name!r} is in eval mode but its running stats were never updated "
                        "(num_batches_tracked == 0): it normalizes with the initial mean 0 and "
                        "variance 1, not with your data's statistics",
                        "train the model (or run a few train-mode forward passes under "
                        "torch.no_grad() over training data) before eval; check that a "
                        "checkpoint with the running stats was loaded",
                        layer=name,
                    )
                )
        params = [
            p for p in (getattr(m, "weight", None), getattr(m, "bias", None)) if p is not None
        ]
        tracks = isinstance(rm, Tensor) and bool(getattr(m, "track_running_stats", True))
        if params and not any(p.requires_grad for p in params) and m.training and tracks:
            findings.append(
                Finding(
                    "frozen-bn-updates",
                    "warning",
                    f"{name!r} has frozen affine parameters (requires_grad=False) but is in "
                    "train mode: its running stats still change every forward and it "
                    "normalizes with batch statistics",
                    "put it in eval mode (module.eval(), again after every model.train()), or "
                    "replace it with a frozen BN layer (e.g. normkit.nn.FrozenBatchNorm2d / "
                    "torchvision.ops.FrozenBatchNorm2d)",
                    layer=name,
                )
            )

    # ---- one-batch checks
    if trace is not None:
        mismatched: list[tuple[str, float, float]] = []
        for name, m in bns:
            if name not in trace.bn_inputs:
                continue
            shape, mean, var, count = trace.bn_inputs[name]
            if m.training:
                if count <= 1:
                    findings.append(
                        Finding(
                            "bn-batch-size-1",
                            "error",
                            f"{name!r} is in train mode and sees one value per channel (input "
                            f"{shape}): batch statistics are undefined (torch raises)",
                            "use batch size ≥ 2 in training, call model.eval() for inference, "
                            "or use GroupNorm/LayerNorm or normkit.nn.BatchRenorm",
                            layer=name,
                        )
                    )
                elif shape[0] == 1:
                    findings.append(
                        Finding(
                            "bn-batch-size-1",
                            "warning",
                            f"{name!r} is in train mode with batch size 1 (input {shape}): it "
                            "normalizes each image with its own statistics (instance norm in "
                            "disguise) and the running stats learn per-image noise",
                            "use batch size ≥ 8 in training, call model.eval() for inference, "
                            "or use GroupNorm/LayerNorm for small batches",
                            layer=name,
                        )
                    )
            rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
            nbt = getattr(m, "num_batches_tracked", None)
            if not (isinstance(rm, Tensor) and isinstance(rv, Tensor)) or count < 2:
                continue
            if isinstance(nbt, Tensor) and int(nbt) == 0:
                continue  # reported as bn-never-updated when it matters
            if not (bool(torch.isfinite(rm).all()) and bool(torch.isfinite(rv).all())):
                continue
            eps = float(getattr(m, "eps", 1e-5))
            rm64, rv64 = rm.detach().double().cpu(), rv.detach().double().cpu()
            z = (mean.double().cpu() - rm64).abs() / (rv64 + eps).sqrt()
            ratio = (var.double().cpu() + eps) / (rv64 + eps)
            z_med, r_med = float(z.median()), float(ratio.median())
            if z_med > mismatch_threshold or not 0.25 <= r_med <= 4.0:
                mismatched.append((name, z_med, r_med))
        if mismatched:
            first, z_med, r_med = mismatched[0]
            findings.append(
                Finding(
                    "bn-eval-mismatch",
                    "warning",
                    f"running stats of {len(mismatched)} BN layer(s) are far from the example "
                    f"batch's statistics: {_short([n for n, _, _ in mismatched])}; first "
                    f"{first!r}: median |Δmean|/σ_running = {z_med:.2f}, median "
                    f"var_batch/var_running = {r_med:.2g}. Eval outputs will differ from "
                    "training outputs",
                    "re-estimate the running stats on training data (train-mode forward passes "
                    "under torch.no_grad(), momentum=None for an exact average), check that "
                    "train and eval preprocessing match, or lower the momentum if the weights "
                    "still move fast",
                    layer=first,
                    value=z_med if z_med > mismatch_threshold else r_med,
                )
            )

    # ---- deep plain net without any normalization
    depth = [n for n, m in modules.items() if is_depth_layer(m)]
    if len(depth) >= _DEEP_PLAIN and not any(is_norm_like(m) for m in modules.values()):
        findings.append(
            Finding(
                "missing-norm",
                "warning",
                f"{len(depth)} conv/linear layers and no normalization layer: deep plain "
                "networks are prone to vanishing/exploding gradients and need a careful init "
                "and a small learning rate",
                "add BatchNorm (conv nets) or LayerNorm/RMSNorm (MLPs, transformers) after the "
                "conv/linear layers, or residual connections with zero-init last layers",
                value=float(len(depth)),
            )
        )
    return sort_findings(findings)
