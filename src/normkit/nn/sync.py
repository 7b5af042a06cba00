"""Synchronized batch norm across processes: ``SyncBatchNorm``.

:func:`normkit.nn.convert_sync_batchnorm` puts it in place of a model's batch norms."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from normkit import _reference
from normkit import functional as NF
from normkit._checks import expand_mask, keep_format
from normkit._stats import Moments, NanPolicy, accumulation_dtype, moments
from normkit.distributed import all_gather_moments, is_distributed
from normkit.nn.batchnorm import BatchNorm

__all__ = ["SyncBatchNorm"]


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
        bias: bool = True,
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
            bias=bias,
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
        m = None if mask is None else expand_mask(mask, input, "SyncBatchNorm", insert_at=ax)
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
        return keep_format(y, input)

    @staticmethod
    def twin_kwargs(module: nn.Module) -> dict[str, Any]:
        """Constructor options :func:`normkit.nn.convert_sync_batchnorm` takes from the layer it
        replaces, beyond the batch-norm ones (none here; the activation for norm+act layers)."""
        return {}

    def extra_options(self) -> str:
        return (", strict=True" if self.strict else "") + super().extra_options()
