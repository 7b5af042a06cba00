"""normkit layers: drop-in twins of the torch.nn norms, and the norms torch.nn lacks."""

from normkit.nn import _catalog as catalog
from normkit.nn._catalog import get_norm, norm_names, register_norm
from normkit.nn._swap import convert_sync_batchnorm, freeze_batchnorm, unfreeze_batchnorm
from normkit.nn.attention import (
    QKNorm,
    ResidualNorm,
    UnitNormalization,
    deepnorm_coefficients,
    deepnorm_init_,
)
from normkit.nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from normkit.nn.cnn_norms import (
    TLU,
    EvoNorm2dB0,
    EvoNorm2dS0,
    FilterResponseNorm2d,
    GlobalResponseNorm,
    SplitBatchNorm2d,
)
from normkit.nn.conditional import (
    AdaGroupNorm,
    AdaIN,
    AdaLayerNorm,
    AdaLNZero,
    ConditionalBatchNorm2d,
    FiLM,
)
from normkit.nn.dyt import DyT, replace_norms
from normkit.nn.frozen import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
)
from normkit.nn.ghost import GhostBatchNorm, GhostBatchNorm1d, GhostBatchNorm2d
from normkit.nn.groupnorm import (
    ChannelNorm,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from normkit.nn.keras import BatchNormalization
from normkit.nn.layernorm import LayerNorm, LayerNorm2d, RMSNorm
from normkit.nn.lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
)
from normkit.nn.localresponse import CrossMapLRN2d, LocalResponseNorm
from normkit.nn.normact import (
    BatchNormAct2d,
    FrozenBatchNormAct2d,
    GroupNormAct,
    LayerNormAct,
    SyncBatchNormAct2d,
    make_activation,
)
from normkit.nn.normalization import Normalization
from normkit.nn.recalibrate import LayerRecalibration, RecalibrationReport, recalibrate_batchnorm
from normkit.nn.recurrent import (
    LayerNormGRU,
    LayerNormGRUCell,
    LayerNormLSTM,
    LayerNormLSTMCell,
    LayerNormRNN,
    LayerNormRNNCell,
)
from normkit.nn.renorm import BatchRenorm, BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from normkit.nn.residual import AddLayerNorm, AddRMSNorm
from normkit.nn.sync import SyncBatchNorm
from normkit.nn.weight import (
    ScaledStdConv2d,
    SpectralNormalization,
    StdConv2d,
    remove_spectral_norm,
    remove_weight_norm,
    spectral_norm,
    weight_norm,
)

__all__ = [
    "TLU",
    "AdaGroupNorm",
    "AdaIN",
    "AdaLNZero",
    "AdaLayerNorm",
    "AddLayerNorm",
    "AddRMSNorm",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct2d",
    "BatchNormalization",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "ChannelNorm",
    "ConditionalBatchNorm2d",
    "CrossMapLRN2d",
    "DyT",
    "EvoNorm2dB0",
    "EvoNorm2dS0",
    "FiLM",
    "FilterResponseNorm2d",
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FrozenBatchNormAct2d",
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GlobalResponseNorm",
    "GroupNorm",
    "GroupNormAct",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LayerNorm2d",
    "LayerNormAct",
    "LayerNormGRU",
    "LayerNormGRUCell",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "LayerNormRNN",
    "LayerNormRNNCell",
    "LayerRecalibration",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "LocalResponseNorm",
    "Normalization",
    "QKNorm",
    "RMSNorm",
    "RecalibrationReport",
    "ResidualNorm",
    "ScaledStdConv2d",
    "SpectralNormalization",
    "SplitBatchNorm2d",
    "StdConv2d",
    "SyncBatchNorm",
    "SyncBatchNormAct2d",
    "UnitNormalization",
    "catalog",
    "convert_sync_batchnorm",
    "deepnorm_coefficients",
    "deepnorm_init_",
    "freeze_batchnorm",
    "get_norm",
    "make_activation",
    "norm_names",
    "recalibrate_batchnorm",
    "register_norm",
    "remove_spectral_norm",
    "remove_weight_norm",
    "replace_norms",
    "spectral_norm",
    "unfreeze_batchnorm",
    "weight_norm",
]
