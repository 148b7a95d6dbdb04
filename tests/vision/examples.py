"""One small configuration per catalogued vision module: (constructor, input shape)."""
from attnkit.nn import vision as V

EXAMPLES = {
    "SqueezeExcitation": (lambda: V.SqueezeExcitation(16, reduction=4), (2, 16, 5, 6)),
    "CBAM": (lambda: V.CBAM(16, reduction=4), (2, 16, 5, 6)),
    "ECA": (lambda: V.ECA(16), (2, 16, 5, 6)),
    "TripletAttention": (lambda: V.TripletAttention(8), (2, 8, 5, 6)),
    "ULSAM": (lambda: V.ULSAM(16, groups=4), (2, 16, 5, 6)),
    "EfficientLocalAttention": (lambda: V.EfficientLocalAttention(16, kernel_size=5, groups=4), (2, 16, 5, 6)),
    "CoordinateAttention": (lambda: V.CoordinateAttention(16), (2, 16, 5, 6)),
    "PolarizedSelfAttention": (lambda: V.PolarizedSelfAttention(16), (2, 16, 5, 6)),
    "SplitAttention": (lambda: V.SplitAttention(16, 16, radix=2, cardinality=2), (2, 16, 5, 6)),
    "ResidualAttention": (lambda: V.ResidualAttention(8, depth=2), (2, 8, 8, 8)),
    "LargeKernelAttention": (lambda: V.LargeKernelAttention(8), (2, 8, 9, 10)),
    "NonLocalBlock": (lambda: V.NonLocalBlock(8, sub_sample=True), (2, 8, 6, 6)),
    "SwinBlock": (lambda: V.SwinBlock(16, heads=2, window=4, shift=2), (2, 16, 8, 8)),
    "LocallyGroupedAttention": (lambda: V.LocallyGroupedAttention(16, heads=2, window=4), (2, 16, 8, 8)),
    "GlobalSubsampledAttention": (lambda: V.GlobalSubsampledAttention(16, heads=2, sr_ratio=2), (2, 16, 8, 8)),
    "ConditionalPositionEncoding": (lambda: V.ConditionalPositionEncoding(16), (2, 16, 5, 6)),
    "TwinsSVTBlock": (lambda: V.TwinsSVTBlock(16, heads=2, window=4, sr_ratio=2), (2, 16, 8, 8)),
    "ChannelGroupAttention": (lambda: V.ChannelGroupAttention(16, groups=4), (2, 16, 5, 6)),
    "SpatialWindowAttention": (lambda: V.SpatialWindowAttention(16, heads=2, window=3), (2, 16, 6, 3)),
    "DualAttentionBlock": (lambda: V.DualAttentionBlock(16, heads=2, groups=4, window=3), (2, 16, 6, 3)),
    "HaloAttention": (lambda: V.HaloAttention(16, heads=2, block=4, halo=1), (2, 16, 8, 8)),
    "BiLevelRoutingAttention": (lambda: V.BiLevelRoutingAttention(16, heads=2, n_win=2, top_k=2, side_dwconv=3),
                                (2, 16, 6, 8)),
    "SuperTokenAttention": (lambda: V.SuperTokenAttention(16, heads=2, stoken=2, iters=2), (2, 16, 6, 8)),
}
