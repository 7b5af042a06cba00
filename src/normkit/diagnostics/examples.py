"""Small models and data for trying the diagnostics (``normkit doctor``'s defaults, the overhead
benchmark): a digits CNN shaped like the lab's, and deep MLPs that show vanishing gradients."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["deep_mlp", "digits", "digits_cnn"]


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


def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download) as ``(x, y)``: ``x`` float32
    ``(1797, 1, 8, 8)`` scaled to [0, 1], ``y`` int64 labels 0–9."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y)
