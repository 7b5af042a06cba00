"""Synchronized batch norm across processes: ``SyncBatchNorm`` and ``convert_sync_batchnorm``."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from normkit import _reference
from normkit import functional as NF
from normkit._stats import Moments, NanPolicy, accumulation_dtype, moments
from normkit.distributed import all_gather_moments, is_distributed
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.ghost import GhostBatchNorm
from normkit.nn.registry import register_norm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class SyncBatchNorm(BatchNorm):
    """Batch norm whose training statistics span every process of a group (Ioffe & Szegedy 2015;
    synchronized BN as in Peng et al. 2018, MegDet, arXiv:1711.07240).

    .. math:: \\mu, \\sigma^2 = \\mathrm{merge}_{r}(n_r, \\mu_r, M_{2,r}),\\qquad
        y = \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}\\gamma + \\beta

    In training each rank's per-feature count, mean and sum of squared deviations are gathered
    (one ``all_gather`` of ``3·C`` values) and merged exactly (Chan et al.), so the output, the
    input gradient (one ``all_reduce`` in backward) and the running statistics equal
    single-process batch norm on the concatenated batch, also for unequal or empty per-rank
    batches. ``weight``/``bias`` gradients are local, to be summed/averaged by DDP as usual.

    Unlike ``torch.nn.SyncBatchNorm``: eval never communicates (pytorch#48988), a rank with an
    empty batch takes part normally (pytorch#74944), ``running_var`` uses the global count
    (pytorch#22192), ``track_running_stats=False`` works (pytorch#40147; eval then normalizes with
    the local batch), any rank ≥ 2 and any feature ``axis`` works, and a batch with NaN/Inf skips
    the update on every rank alike (``nan_policy``). Without an initialized process group it is
    local batch norm with a one-time warning (``strict=True``: :class:`RuntimeError`); on a
    world of size 1 it is local batch norm silently. Works with gloo (CPU) and nccl (GPU).

    Shape: ``(N, C, *)`` with ``axis=1``; ``(N, *, C)`` with ``axis=-1``. ``process_group``:
    the group to synchronize over (default: the world).

    >>> model = convert_sync_batchnorm(model)               # doctest: +SKIP
    >>> ddp = torch.nn.parallel.DistributedDataParallel(model)  # doctest: +SKIP
    """

    _warned_local = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        strict: bool = False,
        axis: int = 1,
        nan_policy: NanPolicy = "skip",
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            axis=axis,
            nan_policy=nan_policy,
            backend=backend,
        )
        self.process_group = process_group
        self.strict = strict

    def _should_sync(self) -> bool:
        """Whether this training step synchronizes (else it is local batch norm)."""
        if not is_distributed():
            if self.strict:
                raise RuntimeError(
                    "SyncBatchNorm(strict=True) needs an initialized torch.distributed process "
                    "group; call torch.distributed.init_process_group(...) first, or pass "
                    "strict=False to fall back to local batch norm"
                )
            if not SyncBatchNorm._warned_local:
                SyncBatchNorm._warned_local = True
                warnings.warn(
                    "SyncBatchNorm: torch.distributed is not initialized, so statistics are "
                    "local to this process (plain batch norm); this warning is shown once",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
        group = self.process_group
        return (
            torch.distributed.get_world_size(group) > 1 and torch.distributed.get_rank(group) >= 0
        )

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and self._should_sync()):
            return super().forward(input, mask)
        ax = self.axis % input.ndim
        dims = [d for d in range(input.ndim) if d != ax]
        m = None if mask is None else NF._expand_mask(mask, input, "SyncBatchNorm", insert_at=ax)
        if input.numel() == 0:  # empty local batch: neutral moments, still joins the collective
            zero = input.to(accumulation_dtype(input.dtype)).sum(dim=dims)
            local = Moments(zero.detach(), zero, zero)
        else:
            mean, var, count = moments(input, dims, mask=m, return_count=True)
            local = Moments(count, mean, var * count)
        total = all_gather_moments(local, self.process_group)
        least = int(total.count.min().item())
        if least <= 1:
            raise ValueError(
                f"SyncBatchNorm in training mode needs more than one value per channel across "
                f"all ranks (got {least}; local input of shape {tuple(input.shape)}); use eval "
                "mode or larger batches"
            )
        mean, var = total.mean, total.var
        y, _, _ = _reference.batch_norm(
            input, mean, var, self.weight, self.bias, False, self.eps, ax
        )
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            NF.update_running_buffers(
                self.running_mean,
                self.running_var,
                mean,
                var,
                total.count if m is not None else least,
                self.momentum,
                num_batches_tracked=self.num_batches_tracked,
                nan_policy=self.nan_policy,
            )
        return NF._keep_format(y, input)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", strict=True" if self.strict else "")


# Exact classes converted to SyncBatchNorm (subclasses with other behaviour are not, see below).
_CONVERTIBLE: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    SyncBatchNorm,
)
# Subclasses with their own sync twin (e.g. BatchNormAct2d -> SyncBatchNormAct2d) register here.
SYNC_TWINS: dict[type[nn.Module], type[SyncBatchNorm]] = {}


def convert_sync_batchnorm(
    module: nn.Module, process_group: Any = None, *, strict: bool = False
) -> nn.Module:
    """Replace every batch norm of ``module`` by a :class:`SyncBatchNorm` (in place).

    Converts ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm``, normkit's
    ``BatchNorm``/``BatchNorm1d/2d/3d``/``SyncBatchNorm`` and ``BatchNormAct2d`` (→
    ``SyncBatchNormAct2d``). The same ``Parameter`` and buffer objects are reused, so an
    optimizer built before still works. ``GhostBatchNorm`` (local by design) and
    ``FrozenBatchNorm`` (no batch statistics) are left as they are; ``BatchRenorm`` and the
    Keras-style ``BatchNormalization`` are left local with a warning. Returns ``module`` (or the
    new layer when ``module`` itself is a batch norm).

    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> type(convert_sync_batchnorm(model)[1]).__name__
    'SyncBatchNorm'
    """
    cls = type(module)
    twin = SYNC_TWINS.get(cls)
    if twin is not None or cls in _CONVERTIBLE:
        target = twin or SyncBatchNorm
        rm = getattr(module, "running_mean", None)
        ref = rm if rm is not None else getattr(module, "weight", None)
        kwargs: dict[str, Any] = {
            "axis": getattr(module, "axis", 1),
            "nan_policy": getattr(module, "nan_policy", "skip"),
            "backend": getattr(module, "backend", "auto"),
            "strict": strict,
        }
        if twin is not None:
            kwargs.update(target.twin_kwargs(module))  # type: ignore[attr-defined]
        new = target(
            module.num_features,  # type: ignore[arg-type]
            module.eps,  # type: ignore[arg-type]
            module.momentum,  # type: ignore[arg-type]
            module.affine,  # type: ignore[arg-type]
            module.track_running_stats,  # type: ignore[arg-type]
            process_group,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
            **kwargs,
        )
        if module.affine:
            new.weight = module.weight  # type: ignore[assignment]
            new.bias = module.bias  # type: ignore[assignment]
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    if isinstance(module, _BatchNorm | BatchNorm) or getattr(module, "is_batchnorm", False):
        if not isinstance(module, GhostBatchNorm):
            warnings.warn(
                f"convert_sync_batchnorm: {cls.__name__} has no synchronized version and stays "
                "local to each process",
                RuntimeWarning,
                stacklevel=2,
            )
        return module
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, process_group, strict=strict)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


register_norm("syncbn", SyncBatchNorm, aliases=("syncbatchnorm",))
