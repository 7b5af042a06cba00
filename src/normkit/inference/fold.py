"""Fold eval-mode batch norm into the Conv/ConvTranspose/Linear layer that feeds it.

In eval mode a batch norm is a per-channel affine map of its input (Ioffe & Szegedy 2015,
arXiv:1502.03167, §3.1: "during inference, batch normalization acts as a simple linear
transformation"). When that input is the output of a convolution or linear layer, which is itself
affine, the two compose into one layer:

.. math::

    s_c = \\frac{\\gamma_c}{\\sqrt{\\sigma^2_c + \\epsilon}}, \\qquad
    W'_{c,\\dots} = s_c\\, W_{c,\\dots}, \\qquad
    b'_c = s_c\\,(b_c - \\mu_c) + \\beta_c

with ``μ``/``σ²`` the running statistics. The fold is done in float64 and cast back to the
layer's dtype, so it adds no more than one rounding per weight.

Finding the pairs: the model is traced with :mod:`torch.fx` (norm, conv and linear layers kept as
leaves) and a BN whose input is a conv/linear output *used by nothing else* is folded. Modules fx
cannot trace are split: their traceable children get the graph pass; ``nn.Sequential``
containers get pattern matching of consecutive children. The model keeps its classes: the conv
gets the folded weights (and a bias if it had none), the BN module is replaced by
:class:`torch.nn.Identity` — or by its activation for norm+activation layers — so a model that was
scriptable / exportable stays so.

Which norms fold, and which activation stays in their place, is the ``fold`` column of the
catalog (:mod:`normkit.nn.catalog`); a user's type takes part through
:func:`register_foldable_norm`. Both read the small protocol ``running_mean``, ``running_var``,
``eps``, optional ``weight``/``bias``, the feature axis, and the activation to keep.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, cast, overload

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from normkit.nn import catalog
from normkit.nn.weight import StdConv2d

__all__ = [
    "FoldReport",
    "FoldableNorm",
    "FoldedPair",
    "NotFolded",
    "fold_batchnorm",
    "fold_into",
    "foldable_norm_types",
    "register_foldable_norm",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCERS: tuple[type[nn.Module], ...] = (*_CONV, *_CONV_T, nn.Linear)

# fx raises these when a forward cannot be traced symbolically (data-dependent control flow,
# Proxy misuse, unsupported builtins); anything else is a real bug and propagates.
_TRACE_ERRORS = (
    torch.fx.proxy.TraceError,
    TypeError,
    ValueError,
    RuntimeError,
    AttributeError,
    NotImplementedError,
    AssertionError,
    IndexError,
    KeyError,
)


@dataclass(frozen=True)
class FoldableNorm:
    """What folding needs from a norm layer in eval mode: ``y = (x − mean)/√(var + eps)·w + b``.

    ``axis`` is the feature axis of the norm's input (1 for torch layouts, −1 for channels-last /
    Keras layouts); ``activation`` is applied after the affine map and stays in the model after
    folding (``None`` for a plain norm).
    """

    running_mean: Tensor
    running_var: Tensor
    eps: float
    weight: Tensor | None = None
    bias: Tensor | None = None
    axis: int = 1
    activation: nn.Module | None = None

    @property
    def num_features(self) -> int:
        return self.running_mean.numel()


Extractor = Callable[[nn.Module], "FoldableNorm | str"]
_FOLDABLE: dict[type[nn.Module], Extractor] = {}
# Layers of libraries normkit does not import, keyed by "module.QualName" (no import needed).
_FOLDABLE_BY_NAME: dict[str, Extractor] = {}


def register_foldable_norm(cls: type[nn.Module] | str, extract: Extractor | None = None) -> None:
    """Let :func:`fold_batchnorm` fold layers of exactly type ``cls``.

    ``cls`` is a class or its ``"module.QualName"`` (for libraries you do not want to import).
    ``extract(module)`` returns a :class:`FoldableNorm`, or a string saying why this instance
    cannot be folded (it is reported). The default, :func:`batchnorm_protocol`, reads
    ``running_mean``, ``running_var``, ``eps``, ``weight``, ``bias`` and ``axis`` (default 1),
    refusing layers in training mode or without running stats; a norm+activation layer passes
    ``activation=`` so that the activation stays after folding.

    >>> class MyFrozenBN(nn.BatchNorm2d):             # a BN subclass fold does not know yet
    ...     pass
    >>> register_foldable_norm(MyFrozenBN)
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), MyFrozenBN(8)).eval()
    >>> fold_batchnorm(model)[1]
    Identity()
    """
    if isinstance(cls, str):
        _FOLDABLE_BY_NAME[cls] = extract or batchnorm_protocol
    else:
        _FOLDABLE[cls] = extract or batchnorm_protocol


def _extractor(m: nn.Module) -> Extractor | None:
    t = type(m)
    user = _FOLDABLE.get(t) or _FOLDABLE_BY_NAME.get(f"{t.__module__}.{t.__qualname__}")
    if user is not None:
        return user
    row = catalog.lookup(t, exact=True)
    return None if row is None or row.fold is None else _catalog_extractor(row.fold)


@cache
def _catalog_extractor(fold: catalog.Fold) -> Extractor:
    """The extractor of a catalog row: the batch-norm protocol with the row's activation."""
    return lambda m: batchnorm_protocol(m, fold.activation(m), frozen=fold.frozen)


def foldable_norm_types() -> tuple[type[nn.Module] | str, ...]:
    """The norm classes (and class names) :func:`fold_batchnorm` knows how to fold: the
    catalog's rows with a fold rule, then the registered ones.

    >>> nn.BatchNorm2d in foldable_norm_types()
    True
    """
    known = tuple(r.cls for r in catalog.rows() if r.fold is not None and r.cls is not None)
    return (*known, *_FOLDABLE, *_FOLDABLE_BY_NAME)


def batchnorm_protocol(
    m: nn.Module, activation: nn.Module | None = None, *, frozen: bool = False
) -> FoldableNorm | str:
    """Read the batch-norm protocol off ``m`` (see :func:`register_foldable_norm`).

    ``frozen=True`` for layers that use their running statistics in training mode too
    (FrozenBatchNorm): their training flag does not matter.
    """
    if m.training and not frozen:
        return (
            "BN is in training mode (it normalizes with batch statistics); call model.eval() "
            "before folding"
        )
    mean = getattr(m, "running_mean", None)
    var = getattr(m, "running_var", None)
    if mean is None or var is None:
        return (
            "BN has no running statistics (track_running_stats=False), so it normalizes with "
            "batch statistics even in eval mode; it is not an affine map and cannot be folded"
        )
    if any(
        isinstance(t, Tensor) and is_lazy(t)
        for t in (mean, var, getattr(m, "weight", None), getattr(m, "bias", None))
    ):
        return "the lazy norm has not seen an input yet (uninitialized parameters); run it once"
    weight = getattr(m, "weight", None)
    bias = getattr(m, "bias", None)
    return FoldableNorm(
        running_mean=mean,
        running_var=var,
        eps=float(m.eps),  # type: ignore[arg-type]
        weight=weight if isinstance(weight, Tensor) else None,
        bias=bias if isinstance(bias, Tensor) else None,
        axis=int(getattr(m, "axis", 1)),
        activation=activation,
    )


# --------------------------------------------------------------------------- the fold itself


@torch.no_grad()
def fold_into(layer: nn.Module, norm: FoldableNorm) -> None:
    """Fold ``norm`` into ``layer`` (Conv*/ConvTranspose*/Linear) in place.

    The layer's output channels must be the norm's features (dim 1 of a conv output, the last
    dim of a linear output). A layer without bias gets one.

    >>> conv, bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8).eval()
    >>> fold_into(conv, batchnorm_protocol(bn))
    """
    w = layer.weight
    if not isinstance(w, Tensor):
        raise TypeError(f"{type(layer).__name__} has no weight tensor to fold into")
    f64 = torch.float64
    scale = torch.rsqrt(norm.running_var.to(f64) + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.to(f64)
    shift = -norm.running_mean.to(f64) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.to(f64)
    if isinstance(layer, _CONV_T):
        groups = layer.groups
        cin, cout_g = w.shape[0], w.shape[1]
        w64 = w.to(f64).reshape(groups, cin // groups, cout_g, *w.shape[2:])
        s = scale.reshape(groups, 1, cout_g, *([1] * (w.ndim - 2)))
        new_w = (w64 * s).reshape(w.shape)
    else:
        new_w = w.to(f64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b = layer.bias
    old_b = b.to(f64) if isinstance(b, Tensor) else torch.zeros_like(scale)
    new_b = old_b * scale + shift
    w.copy_(new_w.to(w.dtype))
    if isinstance(b, Tensor):
        b.copy_(new_b.to(b.dtype))
    else:
        layer.bias = nn.Parameter(new_b.to(device=w.device, dtype=w.dtype), w.requires_grad)


def _out_features(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    return int(layer.out_channels)  # type: ignore[arg-type]


def _compatibility(layer: nn.Module, norm: FoldableNorm) -> str | None:
    """Why ``norm`` cannot be folded into ``layer``, or ``None``."""
    if norm.num_features != _out_features(layer):
        return (
            f"feature count mismatch: {type(layer).__name__} has {_out_features(layer)} output "
            f"channels, the norm {norm.num_features}"
        )
    if isinstance(layer, nn.Linear):
        if norm.axis not in (1, -1):
            return f"the norm's feature axis {norm.axis} is not the Linear's output features"
    elif norm.axis != 1:
        return (
            f"the norm normalizes axis {norm.axis} but the conv's channels are on axis 1; only "
            "channels-first norms fold into a conv"
        )
    if isinstance(layer, StdConv2d):
        return (
            "the conv standardizes its weight on every call (weight standardization), so the "
            "weight it uses is computed; bake it first: a plain Conv2d with the conv's "
            "standardized_weight()"
        )
    if parametrize.is_parametrized(layer):
        return (
            "the layer's weight is parametrized (weight_norm/spectral_norm/...); remove the "
            "parametrization (torch.nn.utils.parametrize.remove_parametrizations) first"
        )
    if not cast(Tensor, layer.weight).is_floating_point():
        return "the layer's weight is not floating point (quantized?)"
    base = next(c for c in type(layer).__mro__ if c in _PRODUCERS)
    if type(layer).forward is not base.forward:
        return (
            f"{type(layer).__name__} overrides {base.__name__}.forward, so its output need not "
            "be the linear map of its stored weight; fold into a plain layer"
        )
    if any(hasattr(layer, f"weight{s}") for s in ("_g", "_orig")):
        return (
            "the layer's weight is recomputed on every call (the old torch.nn.utils.weight_norm "
            "or spectral_norm: weight_g/weight_v or weight_orig); remove it first"
        )
    if _hooks_change_output(layer, base):
        return "the layer has forward hooks that change its output; remove them first"
    return None


@torch.no_grad()
def _hooks_change_output(layer: nn.Module, base: type[nn.Module]) -> bool:
    """Whether calling ``layer`` (hooks included) differs from its class's forward on a
    one-sample probe: public APIs do not list a module's hooks, so their effect is measured."""
    w = cast(Tensor, layer.weight)
    g = torch.Generator(device=w.device).manual_seed(0)
    if isinstance(layer, nn.Linear):
        shape: tuple[int, ...] = (1, layer.in_features)
    else:
        k = cast(tuple[int, ...], layer.kernel_size)
        d = cast(tuple[int, ...], layer.dilation)
        cin = cast(int, layer.in_channels)
        shape = (1, cin, *(di * (ki - 1) + 1 for ki, di in zip(k, d, strict=True)))
    probe = torch.randn(shape, generator=g, device=w.device, dtype=w.dtype)
    called = layer(probe)
    plain = base.forward(layer, probe)
    return not (
        isinstance(called, Tensor) and called.shape == plain.shape and torch.equal(called, plain)
    )


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class FoldedPair:
    """A layer and the norm folded into it (qualified module names)."""

    layer: str
    norm: str
    activation: str | None = None


@dataclass(frozen=True)
class NotFolded:
    """A norm layer left in the model, and why."""

    norm: str
    reason: str


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: ``folded`` pairs, ``skipped`` norms with the reason, and
    the modules fx could not trace (``untraceable``: name → error) that were matched by structure."""

    folded: list[FoldedPair] = field(default_factory=list)
    skipped: list[NotFolded] = field(default_factory=list)
    untraceable: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} norm(s), left {len(self.skipped)}"]
        lines += [f"  folded {p.norm} into {p.layer}" for p in self.folded]
        lines += [f"  kept {s.norm}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------- finding the pairs


class _LeafTracer(torch.fx.Tracer):
    """fx tracer keeping norms, convs, linears and all normkit layers as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _extractor(m) is not None or isinstance(m, _PRODUCERS):
            return True
        if type(m).__module__.startswith("normkit.nn"):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Finder:
    """Walks a model, collecting (layer, norm) candidate pairs and reasons for the rest."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names: dict[int, list[str]] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), []).append(name)
        self.tensor_names: dict[int, list[str]] = {}
        for name, t in (
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ):
            self.tensor_names.setdefault(id(t), []).append(name)
        self.pairs: list[tuple[str, str]] = []
        self.reasons: dict[str, str] = {}
        self.untraceable: dict[str, str] = {}

    def shared(self, m: nn.Module) -> bool:
        return len(self.names.get(id(m), ())) > 1

    def consider(self, layer_name: str, norm_name: str) -> None:
        layer = self.model.get_submodule(layer_name)
        norm = self.model.get_submodule(norm_name)
        if self.shared(norm):
            self.reasons[norm_name] = (
                f"the norm module is shared (registered as {self.names[id(norm)]}); folding it "
                "into one layer would change the others"
            )
            return
        if self.shared(layer):
            self.reasons[norm_name] = (
                f"the preceding {type(layer).__name__} {layer_name!r} is shared (registered as "
                f"{self.names[id(layer)]})"
            )
            return
        for pname, t in layer.named_parameters(recurse=False):
            full = f"{layer_name}.{pname}"
            tied = [n for n in self.tensor_names.get(id(t), []) if n != full]
            if tied:
                self.reasons[norm_name] = (
                    f"{full} is tied to {tied}; folding would change the other users of that tensor"
                )
                return
        self.pairs.append((layer_name, norm_name))

    def walk(self, module: nn.Module, prefix: str) -> None:
        try:
            graph = _LeafTracer().trace(module)
        except _TRACE_ERRORS as e:
            self.untraceable[prefix or "<root>"] = f"{type(e).__name__}: {e}".split("\n")[0]
            self._structural(module, prefix)
            return
        self._graph(module, graph, prefix)

    def _graph(self, module: nn.Module, graph: torch.fx.Graph, prefix: str) -> None:
        calls: dict[str, int] = {}
        read: set[str] = set()  # modules whose tensors forward reads directly (get_attr)
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
            elif node.op == "get_attr":
                read.add(str(node.target).rpartition(".")[0])
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            target = cast(str, node.target)  # a call_module target is a qualified name
            norm = module.get_submodule(target)
            if _extractor(norm) is None:
                continue
            name = _join(prefix, target)
            if calls[target] > 1:
                self.reasons[name] = (
                    f"the norm is called {calls[target]} times in forward (shared BN)"
                )
                continue
            src = node.args[0] if node.args else None
            if not isinstance(src, torch.fx.Node) or src.op != "call_module":
                self.reasons[name] = "its input is not the output of a Conv/ConvTranspose/Linear"
                continue
            src_target = cast(str, src.target)
            layer = module.get_submodule(src_target)
            if not isinstance(layer, _PRODUCERS):
                self.reasons[name] = (
                    f"its input comes from {type(layer).__name__} {_join(prefix, src_target)!r}, "
                    "not from a Conv/ConvTranspose/Linear"
                )
                continue
            if len(src.users) > 1:
                others = sorted(u.name for u in src.users if u is not node)
                self.reasons[name] = (
                    f"the output of {_join(prefix, src_target)!r} is also used by {others} "
                    "(BN input used twice); folding would change those uses"
                )
                continue
            if calls[src_target] > 1:
                self.reasons[name] = (
                    f"{_join(prefix, src_target)!r} is called {calls[src_target]} times in forward"
                )
                continue
            if src_target in read or target in read:
                self.reasons[name] = (
                    f"forward reads the weights of {_join(prefix, src_target)!r} or of the norm "
                    "directly; folding would change what it reads"
                )
                continue
            self.consider(_join(prefix, src_target), name)

    def _structural(self, module: nn.Module, prefix: str) -> None:
        children = list(module.named_children())
        consumed: set[str] = set()
        if isinstance(module, nn.Sequential):
            for (ln, layer), (nn_, norm) in itertools.pairwise(children):
                if isinstance(layer, _PRODUCERS) and _extractor(norm) is not None:
                    self.consider(_join(prefix, ln), _join(prefix, nn_))
                    consumed.add(nn_)
        elif any(_extractor(c) is not None for _, c in children):
            why = self.untraceable[prefix or "<root>"]
            for n, c in children:
                if _extractor(c) is not None:
                    self.reasons.setdefault(
                        _join(prefix, n),
                        f"its parent {prefix or '<root>'!r} could not be traced by torch.fx "
                        f"({why}) and is not an nn.Sequential, so the order of its layers is "
                        "unknown; make it fx-traceable or wrap conv+BN in an nn.Sequential",
                    )
        for n, c in children:
            if n in consumed or _extractor(c) is not None or isinstance(c, _PRODUCERS):
                continue
            if next(c.children(), None) is None:
                continue
            self.walk(c, _join(prefix, n))


def _norm_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, m in model.named_modules():
        if _extractor(m) is not None:
            yield name, m


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


# --------------------------------------------------------------------------- public entry point


@overload
def fold_batchnorm(
    model: nn.Module, *, inplace: bool = ..., return_report: Literal[False] = ...
) -> nn.Module: ...
@overload
def fold_batchnorm(
    model: nn.Module, *, inplace: bool = ..., return_report: Literal[True]
) -> tuple[nn.Module, FoldReport]: ...
def fold_batchnorm(
    model: nn.Module, *, inplace: bool = False, return_report: bool = False
) -> nn.Module | tuple[nn.Module, FoldReport]:
    """Fold every eval-mode batch norm that directly follows a Conv/ConvTranspose/Linear into it.

    .. math:: W' = \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}} W, \\quad
              b' = \\frac{\\gamma}{\\sqrt{\\sigma^2 + \\epsilon}}(b - \\mu) + \\beta

    (Ioffe & Szegedy 2015, arXiv:1502.03167, §3.1.) Handles Conv1d/2d/3d, ConvTranspose1d/2d/3d
    (groups, depthwise, dilation, any padding mode) and Linear followed by a torch.nn or normkit
    batch norm, or any layer registered with :func:`register_foldable_norm`; a norm+activation
    layer is replaced by its activation. Norms that cannot be folded — a BN whose input is used
    elsewhere too, a shared BN, one without running statistics, one not after a conv — are left
    in place and listed with the reason in the report. ``Linear → BatchNorm1d`` is folded
    assuming ``(N, C)`` inputs (the MLP case; a 3-D input would put BatchNorm1d's channels on
    the sequence dim).

    Args:
        model: an ``nn.Module`` in eval mode (``model.eval()``).
        inplace: modify ``model`` itself instead of a deep copy.
        return_report: also return a :class:`FoldReport`.

    Returns:
        The folded model (same classes; BN modules become ``nn.Identity`` or their activation),
        and the report when ``return_report=True``.

    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> folded, report = fold_batchnorm(model, return_report=True)
    >>> folded[1]
    Identity()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module (got {type(model).__name__})")
    if model.training:
        raise ValueError(
            f"fold_batchnorm needs a model in eval mode (got {type(model).__name__} in training "
            "mode, where BatchNorm normalizes with batch statistics and cannot be folded); call "
            "model.eval() first"
        )
    if not inplace:
        model = copy.deepcopy(model)
    report = FoldReport()
    finder = _Finder(model)
    if _extractor(model) is not None:
        finder.reasons[""] = "the model itself is a norm layer; there is no layer to fold it into"
    else:
        finder.walk(model, "")
    report.untraceable = finder.untraceable
    folded: set[str] = set()
    for layer_name, norm_name in finder.pairs:
        layer = model.get_submodule(layer_name)
        norm_mod = model.get_submodule(norm_name)
        spec = _extractor(norm_mod)(norm_mod)  # type: ignore[misc]
        why = spec if isinstance(spec, str) else _compatibility(layer, spec)
        if why is not None:
            finder.reasons[norm_name] = why
            continue
        assert isinstance(spec, FoldableNorm)
        fold_into(layer, spec)
        act = spec.activation
        _set_submodule(model, norm_name, act if act is not None else nn.Identity())
        folded.add(norm_name)
        report.folded.append(
            FoldedPair(layer_name, norm_name, type(act).__name__ if act is not None else None)
        )
    for name, _ in _norm_modules(model):
        if name not in folded:
            reason = finder.reasons.get(
                name, "it is not directly fed by a Conv/ConvTranspose/Linear layer"
            )
            report.skipped.append(NotFolded(name or "<root>", reason))
    return (model, report) if return_report else model
