"""The shared spec table: every norm layer × shapes × layouts, checked by one equivalence suite.

A row names a normkit module factory (taking ``backend=``), its torch.nn twin (or an adaptor
built from torch.nn ops, or ``None`` when torch has no twin and the float64 reference is the only
oracle) and an input shape. Adding an op or a layer adds rows here, not test files; adding a
backend needs nothing (the suite runs every registered backend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import normkit.nn as nkn
from tests import training_twins as tt
from tests import transformer_twins as xt

# Tolerances per dtype, in one place: (rtol, atol) against the float64 reference.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (2e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
LOW_PRECISION = (torch.bfloat16, torch.float16)


class ChannelsLastLayerNorm(nn.Module):
    """torch.nn oracle for LayerNorm2d: move channels last, nn.LayerNorm, move back."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.movedim(1, -1)).movedim(-1, 1)

    def state_dict_map(self) -> dict[str, str]:
        return {"weight": "ln.weight", "bias": "ln.bias"}


class FeatureLastBatchNorm(nn.Module):
    """torch.nn oracle for BatchNorm(axis=-1): move features to dim 1, nn.BatchNorm, move back."""

    def __init__(self, c: int, **kw: object) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(c, **kw)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x.movedim(-1, 1)).movedim(1, -1)


@dataclass(frozen=True)
class NormSpec:
    id: str
    make: Callable[..., nn.Module]
    twin: Callable[[], nn.Module] | None
    shape: tuple[int, ...]
    channels_last: bool = False
    # twin state_dict keys differ (adaptors): normkit key -> twin key
    key_map: tuple[tuple[str, str], ...] = ()
    # the backend op the layer dispatches, when some backends decline some inputs of it (the
    # suite then skips with the backend's reason instead of failing)
    op: str | None = None
    # the module is converted to the input dtype (as models using the parity presets run);
    # otherwise its parameters stay float32 for low-precision inputs
    params_in_input_dtype: bool = False

    def input(self, dtype: torch.dtype, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        x = (torch.randn(self.shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
        if self.channels_last:
            fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        return x


def _materialized(m: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """A lazy layer after one eval call on zeros of ``shape``: its parameters exist, its
    statistics are untouched."""
    m.eval()(torch.zeros(shape))
    return m.train()


def _bn(cls, *a, **kw):
    return lambda backend="auto": cls(*a, backend=backend, **kw)


SPECS: list[NormSpec] = [
    NormSpec("bn1d-2d", _bn(nkn.BatchNorm1d, 6), lambda: nn.BatchNorm1d(6), (8, 6)),
    NormSpec("bn1d-3d", _bn(nkn.BatchNorm1d, 6), lambda: nn.BatchNorm1d(6), (4, 6, 7)),
    NormSpec("bn2d", _bn(nkn.BatchNorm2d, 6), lambda: nn.BatchNorm2d(6), (4, 6, 5, 5)),
    NormSpec("bn2d-cl", _bn(nkn.BatchNorm2d, 6), lambda: nn.BatchNorm2d(6), (4, 6, 5, 5), True),
    NormSpec(
        "bn2d-noaffine",
        _bn(nkn.BatchNorm2d, 6, affine=False),
        lambda: nn.BatchNorm2d(6, affine=False),
        (4, 6, 3, 3),
    ),
    NormSpec(
        "bn2d-nobias",
        _bn(nkn.BatchNorm2d, 6, bias=False),
        lambda: nn.BatchNorm2d(6, bias=False),
        (4, 6, 3, 3),
    ),
    NormSpec(
        "bn2d-cumulative",
        _bn(nkn.BatchNorm2d, 6, momentum=None),
        lambda: nn.BatchNorm2d(6, momentum=None),
        (4, 6, 3, 3),
    ),
    NormSpec(
        "bn2d-notrack",
        _bn(nkn.BatchNorm2d, 6, track_running_stats=False),
        lambda: nn.BatchNorm2d(6, track_running_stats=False),
        (4, 6, 3, 3),
    ),
    NormSpec("bn3d", _bn(nkn.BatchNorm3d, 4), lambda: nn.BatchNorm3d(4), (2, 4, 3, 4, 5)),
    NormSpec("bn3d-cl", _bn(nkn.BatchNorm3d, 4), lambda: nn.BatchNorm3d(4), (2, 4, 3, 4, 5), True),
    NormSpec(
        "bn-axis-last",
        _bn(nkn.BatchNorm, 6, axis=-1),
        lambda: FeatureLastBatchNorm(6),
        (4, 5, 6),
        key_map=tuple(
            (k, "bn." + k)
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
    ),
    NormSpec("ln", _bn(nkn.LayerNorm, 8), lambda: nn.LayerNorm(8), (4, 5, 8)),
    NormSpec("ln-2dims", _bn(nkn.LayerNorm, (5, 8)), lambda: nn.LayerNorm((5, 8)), (3, 5, 8)),
    NormSpec(
        "ln-nobias",
        _bn(nkn.LayerNorm, 8, bias=False),
        lambda: nn.LayerNorm(8, bias=False),
        (6, 8),
    ),
    NormSpec(
        "ln-noaffine",
        _bn(nkn.LayerNorm, 8, elementwise_affine=False),
        lambda: nn.LayerNorm(8, elementwise_affine=False),
        (6, 8),
    ),
    NormSpec("rms", _bn(nkn.RMSNorm, 8), lambda: nn.RMSNorm(8), (4, 5, 8)),
    NormSpec(
        "rms-eps-2dims",
        _bn(nkn.RMSNorm, (5, 8), eps=1e-6),
        lambda: nn.RMSNorm((5, 8), eps=1e-6),
        (3, 5, 8),
    ),
    # parity presets (bit-exactness against transformers: tests/test_presets.py)
    NormSpec(
        "rms-llama",
        _bn(nkn.RMSNorm, 8, eps=1e-6, casting="llama"),
        None,
        (4, 5, 8),
        op="rms_norm_cast",
        params_in_input_dtype=True,
    ),
    NormSpec(
        "rms-gemma",
        _bn(nkn.RMSNorm, 8, casting="gemma"),
        None,
        (4, 5, 8),
        op="rms_norm_cast",
        params_in_input_dtype=True,
    ),
    NormSpec(
        "rms-t5",
        _bn(nkn.RMSNorm, 8, casting="t5"),
        None,
        (6, 8),
        op="rms_norm_cast",
        params_in_input_dtype=True,
    ),
    NormSpec(
        "ln-llama",
        _bn(nkn.LayerNorm, 8, casting="llama"),
        None,
        (4, 5, 8),
        op="layer_norm_cast",
        params_in_input_dtype=True,
    ),
    NormSpec(
        "ln-gemma-zero-centered",
        _bn(nkn.LayerNorm, 8, casting="gemma"),
        None,
        (6, 8),
        op="layer_norm_cast",
        params_in_input_dtype=True,
    ),
    NormSpec("gn", _bn(nkn.GroupNorm, 3, 6), lambda: nn.GroupNorm(3, 6), (4, 6, 5, 5)),
    NormSpec("gn-cl", _bn(nkn.GroupNorm, 3, 6), lambda: nn.GroupNorm(3, 6), (4, 6, 5, 5), True),
    NormSpec(
        "gn-nobias",
        _bn(nkn.GroupNorm, 3, 6, bias=False),
        lambda: nn.GroupNorm(3, 6, bias=False),
        (4, 6, 5, 5),
    ),
    NormSpec("gn-1group-1d", _bn(nkn.GroupNorm, 1, 6), lambda: nn.GroupNorm(1, 6), (4, 6, 9)),
    NormSpec("in1d", _bn(nkn.InstanceNorm1d, 6), lambda: nn.InstanceNorm1d(6), (4, 6, 9)),
    NormSpec(
        "in2d-affine-track",
        _bn(nkn.InstanceNorm2d, 6, affine=True, track_running_stats=True),
        lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        (4, 6, 5, 5),
    ),
    NormSpec(
        "in2d-cl",
        _bn(nkn.InstanceNorm2d, 6, affine=True),
        lambda: nn.InstanceNorm2d(6, affine=True),
        (4, 6, 5, 5),
        True,
    ),
    NormSpec(
        "in1d-affine-nobias-track",
        _bn(nkn.InstanceNorm1d, 6, affine=True, bias=False, track_running_stats=True),
        lambda: nn.InstanceNorm1d(6, affine=True, bias=False, track_running_stats=True),
        (4, 6, 9),
    ),
    NormSpec("in3d", _bn(nkn.InstanceNorm3d, 4), lambda: nn.InstanceNorm3d(4), (2, 4, 3, 4, 5)),
    NormSpec(
        "ln2d",
        _bn(nkn.LayerNorm2d, 6),
        lambda: ChannelsLastLayerNorm(6),
        (4, 6, 5, 5),
        key_map=(("weight", "ln.weight"), ("bias", "ln.bias")),
    ),
    NormSpec(
        "ln2d-cl",
        _bn(nkn.LayerNorm2d, 6),
        lambda: ChannelsLastLayerNorm(6),
        (4, 6, 5, 5),
        True,
        key_map=(("weight", "ln.weight"), ("bias", "ln.bias")),
    ),
    NormSpec("cn", _bn(nkn.ChannelNorm, 6), lambda: nn.InstanceNorm1d(6, affine=True), (4, 6, 9)),
    # training-time family (BatchRenorm, GhostBN, FrozenBN, norm+act, Keras BN, SyncBN)
    NormSpec(
        "brn2d-as-bn",
        _bn(nkn.BatchRenorm2d, 6, r_max=1.0, d_max=0.0),
        lambda: nn.BatchNorm2d(6),
        (4, 6, 2, 2),
    ),
    NormSpec(  # r clipped at r_max (batch std ≈ 2, running ≤ 1.22); momentum 0 keeps it
        "brn2d-clipped",
        _bn(nkn.BatchRenorm2d, 6, momentum=0.0, r_max=1.05, d_max=0.0),
        None,
        (4, 6, 2, 2),
    ),
    NormSpec(
        "gbn2d",
        _bn(nkn.GhostBatchNorm2d, 6, virtual_batch_size=2),
        lambda: tt.ChunkedBatchNorm(nn.BatchNorm2d(6), 2),
        (4, 6, 2, 2),
        key_map=tuple((k, "bn." + k) for k in tt.BN_KEYS),
    ),
    NormSpec(
        "frozenbn2d-affine-grad",
        _bn(nkn.FrozenBatchNorm2d, 6, requires_grad=True),
        lambda: tt.EvalBatchNorm2d(6),
        (2, 6, 2, 2),
    ),
    NormSpec(
        "bnact2d-gelu",
        _bn(nkn.BatchNormAct2d, 6, act="gelu"),
        lambda: nn.Sequential(nn.BatchNorm2d(6), nn.GELU()),
        (4, 6, 2, 2),
        key_map=tuple((k, "0." + k) for k in tt.BN_KEYS),
    ),
    NormSpec(
        "gnact-silu",
        _bn(nkn.GroupNormAct, 3, 6, act="silu"),
        lambda: nn.Sequential(nn.GroupNorm(3, 6), nn.SiLU()),
        (4, 6, 2, 2),
        key_map=(("weight", "0.weight"), ("bias", "0.bias")),
    ),
    NormSpec(
        "lnact-gelu",
        _bn(nkn.LayerNormAct, 8, act="gelu"),
        lambda: nn.Sequential(nn.LayerNorm(8), nn.GELU()),
        (2, 3, 8),
        key_map=(("weight", "0.weight"), ("bias", "0.bias")),
    ),
    NormSpec("keras-bn", _bn(nkn.BatchNormalization, num_features=6), None, (4, 3, 6)),
    # transformer and diffusion layers
    NormSpec("dyt", _bn(nkn.DyT, 8), lambda: xt.PaperDyT(8), (4, 5, 8)),
    NormSpec(
        "dyt-noaffine", _bn(nkn.DyT, 8, alpha_init=0.8, elementwise_affine=False), None, (6, 8)
    ),
    NormSpec(
        "adaln",
        lambda backend="auto": xt.WithCond(nkn.AdaLayerNorm(8, 4, backend=backend), 3, 4),
        None,
        (3, 5, 8),
    ),
    NormSpec(
        "adaln-zero",
        lambda backend="auto": xt.WithCond(nkn.AdaLNZero(8, 4, backend=backend), 3, 4),
        None,
        (3, 5, 8),
    ),
    NormSpec(
        "adagn",
        lambda backend="auto": xt.WithCond(
            nkn.AdaGroupNorm(4, 6, 3, act="silu", backend=backend), 2, 4
        ),
        None,
        (2, 6, 3, 3),
    ),
    NormSpec(
        "cbn2d",
        lambda backend="auto": xt.WithCond(
            nkn.ConditionalBatchNorm2d(6, 3, backend=backend), 4, 0, labels=3
        ),
        None,
        (4, 6, 3, 3),
    ),
    NormSpec("film", lambda backend="auto": xt.WithCond(nkn.FiLM(6, 4), 3, 4), None, (3, 6, 5)),
    NormSpec("unit", lambda backend="auto": nkn.UnitNormalization(), None, (4, 8)),
    *(
        NormSpec(
            f"qknorm-{kind}",
            lambda backend="auto", kind=kind: xt.QKPair(nkn.QKNorm(8, kind, backend=backend)),
            None,
            (2, 3, 4, 8),
        )
        for kind in ("rms", "layer", "l2")
    ),
    *(
        NormSpec(
            f"residual-{placement}",
            lambda backend="auto", placement=placement: nkn.ResidualNorm(
                nn.GELU(),  # parameter-free, so only the norms' numerics are under test
                8,
                placement,
                norm=lambda d: nkn.LayerNorm(d, backend=backend),
                num_layers=6,
            ),
            None,
            (3, 4, 8),
        )
        for placement in ("pre", "post", "deepnorm", "sandwich")
    ),
    NormSpec("syncbn-local", _bn(nkn.SyncBatchNorm, 6), lambda: nn.BatchNorm2d(6), (4, 6, 2, 2)),
    # the CNN zoo (timm's layers are their oracles in tests/test_cnn_norms.py; here the float64
    # run of the same layer bounds every dtype)
    NormSpec("grn-nhwc", lambda backend="auto": nkn.GlobalResponseNorm(6), None, (2, 3, 4, 6)),
    NormSpec(
        "grn-nchw",
        lambda backend="auto": nkn.GlobalResponseNorm(6, channels_last=False),
        None,
        (2, 6, 3, 4),
    ),
    NormSpec("evonorm-b0", lambda backend="auto": nkn.EvoNorm2dB0(6), None, (4, 6, 3, 3)),
    NormSpec("evonorm-s0", lambda backend="auto": nkn.EvoNorm2dS0(6, groups=3), None, (2, 6, 3, 3)),
    NormSpec("frn-tlu", lambda backend="auto": nkn.FilterResponseNorm2d(6), None, (2, 6, 3, 3)),
    NormSpec("split-bn2d", _bn(nkn.SplitBatchNorm2d, 6, num_splits=2), None, (4, 6, 3, 3)),
    # the rest of torch.nn's set: local response norms (torch.nn is their oracle in every rank in
    # tests/test_nn_lazy_lrn.py; torch's CrossMapLRN2d deviates from its formula there) and the
    # lazy layers, materialized by one eval call (their first call is checked there too)
    NormSpec(  # no twin: torch's 4-D LRN runs avg_pool3d, which has no CPU bf16/fp16 kernel
        "lrn",
        _bn(nkn.LocalResponseNorm, 3, alpha=0.5, beta=0.75, k=1.0),
        None,
        (4, 6, 5, 5),
        op="local_response_norm",
    ),
    NormSpec(
        "lrn-3d-even",
        _bn(nkn.LocalResponseNorm, 4, alpha=0.3, beta=0.6, k=2.0),
        lambda: nn.LocalResponseNorm(4, alpha=0.3, beta=0.6, k=2.0),
        (3, 6, 7),
        op="local_response_norm",
    ),
    NormSpec(
        "crossmap-lrn2d",
        _bn(nkn.CrossMapLRN2d, 4, alpha=0.3, beta=0.75, k=2.0),
        None,
        (2, 6, 3, 3),
        op="local_response_norm",
    ),
    NormSpec(
        "lazy-bn2d",
        lambda backend="auto": _materialized(nkn.LazyBatchNorm2d(backend=backend), (4, 6, 3, 3)),
        lambda: _materialized(nn.LazyBatchNorm2d(), (4, 6, 3, 3)),
        (4, 6, 3, 3),
    ),
    NormSpec(
        "lazy-in1d",
        lambda backend="auto": _materialized(nkn.LazyInstanceNorm1d(backend=backend), (4, 6, 9)),
        lambda: _materialized(nn.LazyInstanceNorm1d(), (4, 6, 9)),
        (4, 6, 9),
    ),
    # edge cases as torch.nn handles them: empty batches (empty output, zero parameter grads,
    # running statistics untouched and num_batches_tracked counted), no positions, 1-D inputs
    NormSpec("bn1d-empty", _bn(nkn.BatchNorm1d, 6), lambda: nn.BatchNorm1d(6), (0, 6)),
    NormSpec("bn2d-empty", _bn(nkn.BatchNorm2d, 6), lambda: nn.BatchNorm2d(6), (0, 6, 3, 3)),
    NormSpec(
        "bn2d-empty-cl", _bn(nkn.BatchNorm2d, 6), lambda: nn.BatchNorm2d(6), (0, 6, 3, 3), True
    ),
    NormSpec("bn2d-no-positions", _bn(nkn.BatchNorm2d, 6), lambda: nn.BatchNorm2d(6), (2, 6, 0, 0)),
    NormSpec("ln-empty", _bn(nkn.LayerNorm, 8), lambda: nn.LayerNorm(8), (0, 5, 8)),
    NormSpec("ln-1d", _bn(nkn.LayerNorm, 8), lambda: nn.LayerNorm(8), (8,)),
    NormSpec("rms-empty", _bn(nkn.RMSNorm, 8), lambda: nn.RMSNorm(8), (0, 8)),
    NormSpec("rms-1d", _bn(nkn.RMSNorm, 8), lambda: nn.RMSNorm(8), (8,)),
    NormSpec("gn-empty", _bn(nkn.GroupNorm, 3, 6), lambda: nn.GroupNorm(3, 6), (0, 6, 5, 5)),
    NormSpec("in1d-empty", _bn(nkn.InstanceNorm1d, 6), lambda: nn.InstanceNorm1d(6), (0, 6, 9)),
    NormSpec(
        "ln2d-empty",
        _bn(nkn.LayerNorm2d, 6),
        lambda: ChannelsLastLayerNorm(6),
        (0, 6, 5, 5),
        key_map=(("weight", "ln.weight"), ("bias", "ln.bias")),
    ),
    NormSpec(
        "gbn2d-empty",
        _bn(nkn.GhostBatchNorm2d, 6, virtual_batch_size=2),
        lambda: nn.BatchNorm2d(6),
        (0, 6, 2, 2),
    ),
    NormSpec("keras-bn-empty", _bn(nkn.BatchNormalization, num_features=6), None, (0, 3, 6)),
]

SPEC_IDS = [s.id for s in SPECS]


def to_twin_state(spec: NormSpec, state: dict[str, Tensor]) -> dict[str, Tensor]:
    m = dict(spec.key_map)
    return {m.get(k, k): v for k, v in state.items()}


def from_twin_state(spec: NormSpec, state: dict[str, Tensor]) -> dict[str, Tensor]:
    m = {v: k for k, v in spec.key_map}
    return {m.get(k, k): v for k, v in state.items()}


def randomize_params(module: nn.Module, seed: int = 1) -> None:
    """Non-trivial affine parameters so that weight/bias mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)
