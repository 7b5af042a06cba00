"""Example models shared by the lab, the benchmarks and ``normkit doctor``.

* The lab's small models, each with a pluggable norm (built from :func:`normkit.nn.get_norm`):
  :class:`MLP`, :class:`CNN`, :class:`ResidualNet`, :class:`ElmanRNN`, :class:`TinyTransformer`,
  with :func:`init_weights`.
* Plain torch.nn models for the diagnostics (``normkit doctor``'s default, the overhead
  benchmark): :func:`digits_cnn` (the lab CNN's shape), :func:`deep_mlp` (vanishing gradients)
  and :func:`resnet18` (ResNet-18, He et al. 2016).
* Models for the inference benchmark, in eval mode with random norm statistics (as if trained):
  :func:`resnet_cnn` (ResNet-style, He et al. 2016, arXiv:1512.03385), :func:`bn_mlp` (BatchNorm1d
  after every hidden Linear) and :func:`ln_mlp` (LayerNorm/RMSNorm, which cannot be folded).

Norm names accepted by :func:`make_norm`: ``"none"``, ``"bn"`` (BatchNorm1d/2d), ``"ln"`` (LayerNorm
over the features; for conv maps GroupNorm with one group = LayerNorm over C×H×W with per-channel
affine), ``"ln-simple"`` (the same without gain and bias, Xu et al. 2019), ``"gn"`` (GroupNorm,
``groups`` groups) and any other name registered in :mod:`normkit.nn` (e.g. ``"ghost"``,
``"renorm"`` once they exist), called as ``get_norm(name, features)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from normkit.nn import DyT, QKNorm, ResidualNorm, get_norm

__all__ = [
    "CNN",
    "MLP",
    "BasicBlock",
    "ElmanRNN",
    "ResidualNet",
    "TinyTransformer",
    "bn_mlp",
    "deep_mlp",
    "digits_cnn",
    "init_weights",
    "ln_mlp",
    "make_norm",
    "randomize_norm_stats",
    "resnet18",
    "resnet_cnn",
]

Placement = Literal["pre", "post"]


def make_norm(
    name: str, features: int, *, conv: bool = False, groups: int = 8, **kwargs: Any
) -> nn.Module:
    """A norm layer for ``features`` features (``conv=True``: channels of an ``(N, C, H, W)`` map).

    ``kwargs`` go to the registry's factory for names other than the ones above (e.g.
    ``make_norm("gbn1d", 64, virtual_batch_size=8)``).

    >>> make_norm("bn", 64)
    BatchNorm1d(64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    """
    if name == "none":
        return nn.Identity()
    if name == "bn":
        return get_norm("bn2d" if conv else "bn1d", features)
    if name in ("ln", "ln-simple"):
        affine = name == "ln"
        if conv:
            return get_norm("gn", features, num_groups=1, affine=affine)
        return get_norm("ln", features, elementwise_affine=affine)
    if name == "gn":
        return get_norm("gn", features, num_groups=math.gcd(groups, features))
    return get_norm(name, features, **kwargs)


_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def _act(name: str) -> nn.Module:
    try:
        return _ACTS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTS)}") from None


@torch.no_grad()
def init_weights(model: nn.Module, *, scheme: str = "he", scale: float = 1.0) -> None:
    """Re-initialise every Linear/Conv weight as ``N(0, (scale·gain)² / fan_in)``, biases zero.

    ``scheme="he"``: gain √2 (He et al. 2015); ``"lecun"``: gain 1. Norm layers keep γ=1, β=0.
    """
    gain = {"he": math.sqrt(2.0), "lecun": 1.0}[scheme]
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, scale * gain / math.sqrt(fan_in))
            if m.bias is not None:
                m.bias.zero_()


class MLP(nn.Module):
    """``in → [Linear → norm → act → dropout] × len(hidden) → Linear → out``.

    ``placement="post"`` puts the norm after the nonlinearity instead; ``norm_kwargs`` go to
    :func:`make_norm`. ``tap`` keeps the
    pre-activation input of the last hidden layer (after the norm) for inspection.
    """

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        out_features: int,
        *,
        norm: str = "none",
        act: str = "relu",
        placement: Placement = "pre",
        dropout: float = 0.0,
        norm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        d = in_features
        for h in hidden:
            norm_layer = make_norm(norm, h, **(norm_kwargs or {}))
            parts: list[nn.Module] = [nn.Linear(d, h)]
            parts += [norm_layer, _act(act)] if placement == "pre" else [_act(act), norm_layer]
            if dropout > 0:
                parts.append(nn.Dropout(dropout))
            self.blocks.append(nn.Sequential(*parts))
            d = h
        self.head = nn.Linear(d, out_features)
        self.tap: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def last_preactivation(self, x: Tensor) -> Tensor:
        """The nonlinearity's input in the last hidden layer (``placement="pre"`` models)."""
        x = x.flatten(1)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        assert isinstance(last, nn.Sequential)
        return last[1](last[0](x))


class CNN(nn.Module):
    """``conv3×3(1→c) → norm → act → conv3×3(c→2c, stride 2) → norm → act → Linear``, for 8×8 maps."""

    def __init__(
        self,
        channels: int = 8,
        num_classes: int = 10,
        *,
        norm: str = "none",
        placement: Placement = "pre",
        size: int = 8,
    ) -> None:
        super().__init__()
        c = channels

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            n = make_norm(norm, cout, conv=True)
            conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            return (
                nn.Sequential(conv, n, nn.ReLU())
                if placement == "pre"
                else (nn.Sequential(conv, nn.ReLU(), n))
            )

        self.features = nn.Sequential(stage(1, c, 1), stage(c, 2 * c, 2))
        self.head = nn.Linear(2 * c * (size // 2) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class _Block(nn.Module):
    """ResNet basic block: ``act(x + norm(W₂ act(norm(W₁ x))))``; ``skip=False`` drops ``x +``."""

    def __init__(self, width: int, *, norm: str, skip: bool, conv: bool) -> None:
        super().__init__()

        def layer() -> nn.Module:
            if conv:
                return nn.Conv2d(width, width, 3, padding=1)
            return nn.Linear(width, width)

        self.l1, self.l2 = layer(), layer()
        self.n1 = make_norm(norm, width, conv=conv)
        self.n2 = make_norm(norm, width, conv=conv)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        y = self.n2(self.l2(torch.relu(self.n1(self.l1(x)))))
        return torch.relu(x + y if self.skip else y)


class ResidualNet(nn.Module):
    """Stem → ``blocks`` basic blocks (2 weight layers each) → Linear; ``arch`` ``"mlp"`` or ``"cnn"``.

    The four arms of He et al. 2016 scaled down: plain, +BN (``norm="bn"``), +skip, +both.
    Depth in weight layers is ``2·blocks + 2``. The CNN stem is a stride-2 conv (8×8 → 4×4).
    """

    def __init__(
        self,
        blocks: int,
        *,
        width: int = 32,
        norm: str = "none",
        skip: bool = False,
        arch: Literal["mlp", "cnn"] = "mlp",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        conv = arch == "cnn"
        self.conv = conv
        self.stem = nn.Conv2d(1, width, 3, stride=2, padding=1) if conv else nn.Linear(64, width)
        self.blocks = nn.Sequential(
            *[_Block(width, norm=norm, skip=skip, conv=conv) for _ in range(blocks)]
        )
        self.head = nn.Linear(width * 16 if conv else width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x if self.conv else x.flatten(1)
        x = self.blocks(torch.relu(self.stem(x)))
        return self.head(x.flatten(1))


class ElmanRNN(nn.Module):
    """``h_t = tanh(norm(W_x x_t + W_h h_{t−1}))``, class logits from the last ``h``.

    With ``norm="bn"`` one BatchNorm (shared statistics and running buffers) is applied at every
    time step — the naive recurrent BN that LN was proposed to replace (Ba et al. 2016).
    """

    def __init__(
        self, in_features: int, hidden: int, num_classes: int, *, norm: str = "none"
    ) -> None:
        super().__init__()
        self.wx = nn.Linear(in_features, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)
        self.norm = make_norm(norm, hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        xs = self.wx(x)  # (N, T, H) in one matmul
        for t in range(x.shape[1]):
            h = torch.tanh(self.norm(xs[:, t] + self.wh(h)))
        return self.head(h)


class _Attention(nn.Module):
    """Multi-head self-attention with an optional QK-norm; keeps the largest |logit| it saw."""

    def __init__(self, dim: int, heads: int, qk_norm: str | None) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.qk = QKNorm(self.head_dim, qk_norm) if qk_norm else None
        self.max_logit = 0.0

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk is not None:
            q, k = self.qk(q, k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        self.max_logit = max(self.max_logit, float(logits.detach().abs().max()))
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class TinyTransformer(nn.Module):
    """A small transformer classifier over token sequences (digits as 8 rows of 8 pixels).

    Embedding + learned positions, ``depth`` blocks of attention and MLP sublayers, each wrapped
    in :class:`~normkit.nn.ResidualNorm` with ``placement`` (``"pre"``, ``"post"``, ...), norm
    ``norm`` (``"ln"``, ``"rms"``, ``"dyt"``), optional QK-norm (``qk_norm="layer"``/``"rms"``),
    a final norm for Pre-LN, mean-pooling and a linear head.

    >>> TinyTransformer()(torch.randn(4, 8, 8)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        in_dim: int = 8,
        seq_len: int = 8,
        dim: int = 32,
        heads: int = 2,
        depth: int = 2,
        classes: int = 10,
        *,
        placement: str = "pre",
        norm: str = "ln",
        qk_norm: str | None = None,
        mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)

        def make(d: int) -> nn.Module:
            return DyT(d) if norm == "dyt" else get_norm(norm, d)

        blocks: list[nn.Module] = []
        for _ in range(depth):
            mlp = nn.Sequential(
                nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
            )
            for f in (_Attention(dim, heads, qk_norm), mlp):
                blocks.append(ResidualNorm(f, dim, placement, norm=make, num_layers=2 * depth))
        self.blocks = nn.Sequential(*blocks)
        self.final = make(dim) if placement in ("pre", "sandwich") else nn.Identity()
        self.head = nn.Linear(dim, classes)

    def attentions(self) -> list[_Attention]:
        return [m for m in self.modules() if isinstance(m, _Attention)]

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.embed(x) + self.pos)
        return self.head(self.final(h).mean(1))


# --------------------------------------------------------------------------- diagnostics


def digits_cnn(channels: int = 8, num_classes: int = 10, *, norm: bool = True) -> nn.Module:
    """``conv3×3(1→c) → BN → ReLU → conv3×3(c→2c, stride 2) → BN → ReLU → Linear`` for 1×8×8
    digits images (the shape of the lab's CNN); convs carry no bias when a BN follows.

    >>> y = digits_cnn()(torch.randn(64, 1, 8, 8))    # (64, 10)
    """
    c = channels

    def norm_layer(n: int) -> nn.Module:
        return nn.BatchNorm2d(n) if norm else nn.Identity()

    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, bias=not norm),
        norm_layer(c),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=not norm),
        norm_layer(2 * c),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * c * 16, num_classes),
    )


def deep_mlp(
    depth: int = 30,
    width: int = 32,
    in_features: int = 64,
    num_classes: int = 10,
    *,
    act: str = "sigmoid",
    norm: bool = False,
) -> nn.Module:
    """``depth × (Linear → [BatchNorm1d] → act) → Linear`` with torch's default init. With
    ``act="sigmoid"`` and no norm the gradient shrinks ≈ ×0.1 per layer toward the input
    (sigmoid' ≤ 1/4 times the weights' gain), the textbook vanishing-gradient net.

    >>> y = deep_mlp(30)(torch.randn(8, 64))
    """
    acts: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
    if act not in acts:
        raise ValueError(f"act must be one of {sorted(acts)} (got {act!r})")
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(acts[act]())
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- inference


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with a conv+BN shortcut when the
    shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@torch.no_grad()
def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial running stats and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        if isinstance(mean, Tensor) and isinstance(var, Tensor):
            mean.copy_(torch.randn(mean.shape, generator=g) * 0.1)
            var.copy_(torch.rand(var.shape, generator=g) * 0.5 + 0.75)
        for name in ("weight", "bias"):
            p = getattr(m, name, None)
            if isinstance(p, Tensor) and type(m).__name__.lower().find("norm") >= 0:
                lo = 0.75 if name == "weight" else -0.1
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + lo)
    return model


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition"): a 7×7
    stride-2 stem and 3×3 max-pool, four stages of two basic blocks (64, 128, 256, 512
    channels, stride 2 from the second stage), global average pooling and a Linear; 11.2M
    parameters for 10 classes, torch.nn layers only, torch's default init, train mode.

    >>> y = resnet18(10)(torch.randn(2, 3, 64, 64))    # (2, 10)
    """
    widths = (64, 128, 256, 512)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = 64
    for i, w in enumerate(widths):
        layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def resnet_cnn(
    widths: tuple[int, ...] = (32, 64, 128), blocks: int = 2, num_classes: int = 10
) -> nn.Module:
    """A ResNet-style CNN for ``(N, 3, H, W)`` images, in eval mode with random running stats.

    >>> y = resnet_cnn()(torch.randn(8, 3, 128, 128))   # (8, 10)
    """
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks):
            layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return randomize_norm_stats(nn.Sequential(*layers)).eval()


def bn_mlp(sizes: tuple[int, ...] = (512, 1024, 1024, 1024, 10)) -> nn.Module:
    """An MLP ``Linear → BatchNorm1d → ReLU`` per hidden layer, in eval mode, random running stats.

    >>> y = bn_mlp()(torch.randn(256, 512))   # (256, 10)
    """
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes[:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return randomize_norm_stats(nn.Sequential(*layers)).eval()


def ln_mlp(dim: int = 256, hidden: int = 1024) -> nn.Module:
    """``RMSNorm(Linear(GELU(LayerNorm(Linear(x)))))`` on ``(tokens, dim)``, eval mode.

    >>> y = ln_mlp()(torch.randn(2048, 256))   # (2048, 256)
    """
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Linear(dim, hidden),
        nn.LayerNorm(hidden),
        nn.GELU(),
        nn.Linear(hidden, dim),
        nn.RMSNorm(dim),
    )
    return randomize_norm_stats(block).eval()
