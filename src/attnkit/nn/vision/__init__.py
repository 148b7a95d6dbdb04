"""Vision attention modules: channel / spatial attention for
CNNs and ViT attention blocks. Every module takes and returns NCHW tensors.

    from attnkit.nn.vision import CBAM, SwinBlock, modules
    [m.name for m in modules()]     # each with its paper and file
"""
from .biformer import BiLevelRoutingAttention
from .catalogue import VisionModule, modules
from .cbam import CBAM
from .coordinate import CoordinateAttention
from .davit import ChannelGroupAttention, DualAttentionBlock, SpatialWindowAttention
from .eca import ECA, eca_kernel_size
from .ela import EfficientLocalAttention
from .halo import HaloAttention
from .large_kernel import LargeKernelAttention
from .non_local import NonLocalBlock
from .polarized import PolarizedSelfAttention
from .residual_attention import ResidualAttention
from .split_attention import SplitAttention
from .squeeze_excitation import SqueezeExcitation
from .super_token import SuperTokenAttention
from .swin import SwinBlock
from .triplet import TripletAttention
from .twins import GlobalSubsampledAttention, LocallyGroupedAttention, TwinsSVTBlock
from .twins_pcpvt import ConditionalPositionEncoding, PCPVTStage, TwinsPCPVT, twins_pcpvt
from .ulsam import ULSAM

__all__ = [
    "modules", "VisionModule", "eca_kernel_size",
    "BiLevelRoutingAttention", "CBAM", "ChannelGroupAttention", "ConditionalPositionEncoding", "CoordinateAttention", "DualAttentionBlock", "SpatialWindowAttention", "ECA", "EfficientLocalAttention",
    "GlobalSubsampledAttention", "HaloAttention", "LargeKernelAttention", "LocallyGroupedAttention",
    "NonLocalBlock", "PCPVTStage", "PolarizedSelfAttention", "ResidualAttention", "SplitAttention",
    "SqueezeExcitation", "SuperTokenAttention", "SwinBlock", "TripletAttention", "TwinsPCPVT", "TwinsSVTBlock", "ULSAM", "twins_pcpvt",
]
