"""Weight-side normalization: weight norm, spectral norm, and weight standardization.

Weight norm and spectral norm are torch's own parametrizations
(:mod:`torch.nn.utils.parametrizations`: outputs, gradients and power-iteration state are
torch's), with what torch lacks: a spectral-normed module loads checkpoints saved with the old
``torch.nn.utils.spectral_norm`` key layout (``weight_orig``/``weight_u``/``weight_v``) as well as
the new one (torch already converts weight norm's old ``weight_g``/``weight_v``), ``remove_*``
that say what is missing, and Keras' ``SpectralNormalization(layer)`` wrapper.

Weight standardization (``StdConv2d``, ``ScaledStdConv2d``) normalizes each output filter of
a convolution to zero mean and unit variance before the convolution, which lets batch-free
CNNs (GroupNorm or no norm at all, NF-Nets) train.
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

__all__ = [
    "ScaledStdConv2d",
    "SpectralNormalization",
    "StdConv2d",
    "remove_spectral_norm",
    "remove_weight_norm",
    "spectral_norm",
    "weight_norm",
]


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0) -> nn.Module:
    """Weight normalization (Salimans & Kingma 2016, arXiv:1602.07868) of ``module.<name>``.

    .. math:: w = g\\,\\frac{v}{\\lVert v \\rVert}

    with the norm over every dim except ``dim`` (``dim=None``: over the whole tensor). This is
    :func:`torch.nn.utils.parametrizations.weight_norm` (parameters ``original0`` = g,
    ``original1`` = v); checkpoints with the old ``weight_g``/``weight_v`` keys load too.
    Returns ``module``; :func:`remove_weight_norm` undoes it.

    >>> m = weight_norm(torch.nn.Linear(20, 40))
    >>> m.parametrizations.weight.original0.shape
    torch.Size([40, 1])
    """
    _check_has(module, name, "weight_norm")
    # torch annotates ``dim`` as int but documents and handles ``None`` (norm over everything)
    return parametrizations.weight_norm(module, name=name, dim=dim)  # type: ignore[arg-type]


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018, arXiv:1802.05957) of ``module.<name>``.

    .. math:: w = \\frac{W}{\\sigma(W)}, \\qquad \\sigma(W) \\approx u^\\top W v

    with ``u``, ``v`` from ``n_power_iterations`` steps of power iteration per training forward
    (eval reuses the last ones). This is :func:`torch.nn.utils.parametrizations.spectral_norm`
    (its power iteration updates ``u``/``v`` in place but hands autograd clones, so two forwards
    before one backward and DDP work: pytorch#11476), plus loading of checkpoints saved with the
    old :func:`torch.nn.utils.spectral_norm` (keys ``weight_orig``, ``weight_u``, ``weight_v``).
    ``dim`` defaults to 0 (1 for transposed convolutions). Returns ``module``.

    >>> m = spectral_norm(torch.nn.Linear(20, 40))
    >>> y = m(torch.randn(2, 20))
    """
    _check_has(module, name, "spectral_norm")
    if n_power_iterations < 1:
        raise ValueError(
            f"spectral_norm: n_power_iterations must be at least 1 (got {n_power_iterations})"
        )
    if eps <= 0:
        raise ValueError(f"spectral_norm: eps must be positive (got {eps})")
    parametrizations.spectral_norm(module, name, n_power_iterations, eps, dim)
    module.register_load_state_dict_pre_hook(_OldSpectralKeys(name))
    return module


class _OldSpectralKeys:
    """Load-time renaming of the old spectral-norm keys into the parametrization's keys."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        plist = getattr(getattr(module, "parametrizations", None), self.name, None)
        if plist is None:  # removed since
            return
        index = next((i for i, p in enumerate(plist) if type(p).__name__ == "_SpectralNorm"), None)
        if index is None:
            return
        new_root = f"{prefix}parametrizations.{self.name}."
        renames = {
            f"{prefix}{self.name}_orig": f"{new_root}original",
            f"{prefix}{self.name}_u": f"{new_root}{index}._u",
            f"{prefix}{self.name}_v": f"{new_root}{index}._v",
        }
        if all(old in state_dict for old in renames) and not any(
            new in state_dict for new in renames.values()
        ):
            for old, new in renames.items():
                state_dict[new] = state_dict.pop(old)


def _check_has(module: nn.Module, name: str, fn: str) -> None:
    if not isinstance(getattr(module, name, None), Tensor):
        raise ValueError(
            f"{fn}: {type(module).__name__} has no tensor attribute {name!r}; pass name= the "
            "parameter to normalize (e.g. 'weight')"
        )


def _remove(module: nn.Module, name: str, kind: str, fn: str) -> nn.Module:
    plist = getattr(getattr(module, "parametrizations", None), name, None)
    kinds = [type(p).__name__ for p in plist] if plist is not None else []
    if kind not in kinds:
        applied = fn.removeprefix("remove_")
        raise ValueError(
            f"{fn}: {type(module).__name__}.{name} has no {applied} parametrization "
            f"(found {kinds or 'none'}); apply {applied} first or pass the right name="
        )
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


def remove_weight_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Undo :func:`weight_norm`: ``module.<name>`` becomes a plain parameter holding ``g·v/‖v‖``.

    >>> m = remove_weight_norm(weight_norm(torch.nn.Linear(20, 40)))
    >>> sorted(m.state_dict())
    ['bias', 'weight']
    """
    return _remove(module, name, "_WeightNorm", "remove_weight_norm")


def remove_spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Undo :func:`spectral_norm`: ``module.<name>`` becomes a plain parameter holding ``W/σ``.

    >>> m = remove_spectral_norm(spectral_norm(torch.nn.Linear(20, 40)))
    >>> sorted(m.state_dict())
    ['bias', 'weight']
    """
    return _remove(module, name, "_SpectralNorm", "remove_spectral_norm")


class SpectralNormalization(nn.Module):
    """Keras' ``keras.layers.SpectralNormalization(layer, power_iterations=1)`` in PyTorch.

    Wraps ``layer`` and spectral-normalizes its ``weight`` (Keras' ``kernel``) with
    :func:`spectral_norm`; calling the wrapper calls the layer. Unlike a bare parametrized
    module (torch refuses to pickle those: save their state_dict), the wrapper pickles: it is
    rebuilt from the plain layer and its state.

    >>> sn = SpectralNormalization(torch.nn.Conv2d(3, 8, 3), power_iterations=2)
    >>> y = sn(torch.randn(1, 3, 8, 8))
    """

    def __init__(self, layer: nn.Module, power_iterations: int = 1, *, eps: float = 1e-12) -> None:
        super().__init__()
        self.power_iterations = power_iterations
        self.layer = spectral_norm(layer, "weight", power_iterations, eps)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy of the layer without its parametrization: register_parametrization swapped the
        # layer's class for a generated subclass (shared by copies, so removing the
        # parametrization from a copy would break the original); restore the base class.
        plain = copy.deepcopy(self.layer)
        original = _weight_parametrization(plain).original
        plain.__class__ = type(self.layer).__bases__[0]
        delattr(plain, "parametrizations")
        plain.weight = nn.Parameter(original.detach())
        eps = cast(float, _weight_parametrization(self.layer)[0].eps)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        return (_rebuild_spectral, (plain, self.power_iterations, eps, state, self.training))


def _weight_parametrization(layer: nn.Module) -> parametrize.ParametrizationList:
    """The parametrizations registered on ``layer.weight``."""
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, layer.parametrizations).weight)


def _rebuild_spectral(
    layer: nn.Module, power_iterations: int, eps: float, state: dict[str, Tensor], training: bool
) -> SpectralNormalization:
    sn = SpectralNormalization(layer, power_iterations, eps=eps)
    sn.load_state_dict(state)
    return sn.train(training)


def _standardized(weight: Tensor, eps: float, gain: Tensor | None = None) -> Tensor:
    """Each output filter of ``weight`` standardized: ``(w − mean) / sqrt(var + eps)`` (biased
    variance over the fan-in), statistics in float32 for half weights, times ``gain``."""
    w = weight.reshape(weight.shape[0], -1)
    acc = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    var, mean = torch.var_mean(acc, dim=1, keepdim=True, correction=0)
    out = (acc - mean) * torch.rsqrt(var + eps)
    if gain is not None:
        out = out * gain.reshape(-1, 1).to(out.dtype)
    return out.to(weight.dtype).reshape_as(weight)


def _same_padding(kernel_size: Any, stride: Any, dilation: Any) -> Any:
    """Symmetric padding that keeps the size at stride 1 (timm's ``get_padding``)."""
    k, s, d = (
        v if isinstance(v, tuple | list) else (v, v) for v in (kernel_size, stride, dilation)
    )
    return tuple(((si - 1) + di * (ki - 1)) // 2 for ki, si, di in zip(k, s, d, strict=True))


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardization (Qiao et al. 2019, arXiv:1903.10520; timm's
    ``StdConv2d``, used by BiT ResNet-V2).

    .. math:: \\hat W_{o} = \\frac{W_o - \\mathrm{mean}(W_o)}{\\sqrt{\\mathrm{Var}(W_o) + \\epsilon}},
        \\qquad y = \\hat W * x + b

    with mean and (biased) variance over each output filter's fan-in. Same arguments as
    :class:`torch.nn.Conv2d` (``padding=None`` keeps the spatial size at stride 1, as timm),
    ``bias=False`` by default, plus ``eps``. The state_dict is Conv2d's.

    >>> conv = StdConv2d(3, 16, 3)
    >>> y = conv(torch.randn(2, 3, 8, 8))       # (2, 16, 8, 8)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-6,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if padding is None:
            padding = _same_padding(kernel_size, stride, dilation)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.eps = eps

    def standardized_weight(self) -> Tensor:
        """The weight the convolution uses."""
        return _standardized(self.weight, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.standardized_weight(), self.bias)


class ScaledStdConv2d(StdConv2d):
    """Conv2d with scaled weight standardization (Brock et al. 2021, arXiv:2101.08692, NF-Nets;
    timm's ``ScaledStdConv2d``).

    .. math:: \\hat W_{o} = g_o\\,\\frac{\\gamma}{\\sqrt{\\text{fan-in}}}\\,
        \\frac{W_o - \\mathrm{mean}(W_o)}{\\sqrt{\\mathrm{Var}(W_o) + \\epsilon}}

    ``gain`` (``g``, one per output channel, initialized to ``gain_init``) is learned; ``gamma``
    is the activation's gain (e.g. 1.7139 for ReLU in NF-Nets). ``bias=True`` by default.
    Parameters: Conv2d's plus ``gain`` of shape ``(out_channels, 1, 1, 1)`` (timm's layout).

    >>> conv = ScaledStdConv2d(3, 16, 3, gamma=1.7139)
    >>> y = conv(torch.randn(2, 3, 8, 8))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        gamma: float = 1.0,
        eps: float = 1e-6,
        gain_init: float = 1.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, eps,
            device, dtype,
        )  # fmt: skip
        self.gamma = gamma
        self.gain_init = gain_init
        self.scale = gamma / math.sqrt(self.weight[0].numel())
        self.gain = nn.Parameter(
            torch.full((out_channels, 1, 1, 1), gain_init, device=device, dtype=dtype)
        )

    def reset_parameters(self) -> None:
        """Conv2d's initialization; ``gain = gain_init``."""
        super().reset_parameters()
        if hasattr(self, "gain"):
            nn.init.constant_(self.gain, self.gain_init)

    def standardized_weight(self) -> Tensor:
        """The weight the convolution uses."""
        return _standardized(self.weight, self.eps, self.gain * self.scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gamma={self.gamma}, eps={self.eps}"
