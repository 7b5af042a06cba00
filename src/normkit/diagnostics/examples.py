"""Small models and data for trying the diagnostics (``normkit doctor``'s defaults, the overhead
benchmark): a digits CNN shaped like the lab's, deep MLPs that show vanishing gradients and a
ResNet-18-style CNN."""

from __future__ import annotations

from torch import Tensor, nn

from normkit._optional import require

__all__ = ["deep_mlp", "digits", "digits_cnn", "resnet18"]


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


class _BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``, the shortcut a strided 1×1 conv +
    BN when the shape changes (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition"): a 7×7
    stride-2 stem and 3×3 max-pool, four stages of two basic blocks (64, 128, 256, 512
    channels, stride 2 from the second stage), global average pooling and a Linear; 11.2M
    parameters for 10 classes, torch.nn layers only.

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
        layers += [_BasicBlock(cin, w, 1 if i == 0 else 2), _BasicBlock(w, w, 1)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download) as ``(x, y)``: ``x`` float32
    ``(1797, 1, 8, 8)`` scaled to [0, 1], ``y`` int64 labels 0–9."""
    import torch

    datasets = require("sklearn.datasets", extra="data", feature="the digits example data")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y)
