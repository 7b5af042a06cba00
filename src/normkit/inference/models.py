"""Small reference models for the inference benchmark and examples.

``resnet_cnn()`` is a ResNet-style CNN (He et al. 2016, arXiv:1512.03385: basic blocks with
skip connections, a 1×1 conv + BN downsample, every conv followed by BatchNorm2d), ``mlp()`` a
multilayer perceptron with BatchNorm1d after every hidden Linear, ``ln_mlp()`` a transformer-style
MLP block whose LayerNorm/RMSNorm cannot be folded (so only the norm backend can help). All come
with random norm parameters/statistics (as if trained) and are returned in eval mode.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ln_mlp", "mlp", "randomize_norm_stats", "resnet_cnn"]


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


def mlp(sizes: tuple[int, ...] = (512, 1024, 1024, 1024, 10)) -> nn.Module:
    """An MLP ``Linear → BatchNorm1d → ReLU`` per hidden layer, in eval mode, random running stats.

    >>> y = mlp()(torch.randn(256, 512))   # (256, 10)
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
