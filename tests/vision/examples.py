"""One small configuration per catalogued vision module: (constructor taking device=/dtype=, input shape)."""
from attnkit.nn import vision as V

EXAMPLES = {
    "SqueezeExcitation": (lambda **kw: V.SqueezeExcitation(16, reduction=4, **kw), (2, 16, 5, 6)),
    "CBAM": (lambda **kw: V.CBAM(16, reduction=4, **kw), (2, 16, 5, 6)),
    "ECA": (lambda **kw: V.ECA(16, **kw), (2, 16, 5, 6)),
    "TripletAttention": (lambda **kw: V.TripletAttention(8, **kw), (2, 8, 5, 6)),
    "ULSAM": (lambda **kw: V.ULSAM(16, groups=4, **kw), (2, 16, 5, 6)),
    "EfficientLocalAttention": (lambda **kw: V.EfficientLocalAttention(16, kernel_size=5, groups=4, **kw), (2, 16, 5, 6)),
    "CoordinateAttention": (lambda **kw: V.CoordinateAttention(16, **kw), (2, 16, 5, 6)),
    "PolarizedSelfAttention": (lambda **kw: V.PolarizedSelfAttention(16, **kw), (2, 16, 5, 6)),
    "SplitAttention": (lambda **kw: V.SplitAttention(16, 16, radix=2, cardinality=2, **kw), (2, 16, 5, 6)),
    "ResidualAttention": (lambda **kw: V.ResidualAttention(8, depth=2, **kw), (2, 8, 8, 8)),
    "LargeKernelAttention": (lambda **kw: V.LargeKernelAttention(8, **kw), (2, 8, 9, 10)),
    "NonLocalBlock": (lambda **kw: V.NonLocalBlock(8, sub_sample=True, **kw), (2, 8, 6, 6)),
    "SwinBlock": (lambda **kw: V.SwinBlock(16, heads=2, window=4, shift=2, **kw), (2, 16, 8, 8)),
    "LocallyGroupedAttention": (lambda **kw: V.LocallyGroupedAttention(16, heads=2, window=4, **kw), (2, 16, 8, 8)),
    "GlobalSubsampledAttention": (lambda **kw: V.GlobalSubsampledAttention(16, heads=2, sr_ratio=2, **kw), (2, 16, 8, 8)),
    "ConditionalPositionEncoding": (lambda **kw: V.ConditionalPositionEncoding(16, **kw), (2, 16, 5, 6)),
    "TwinsSVTBlock": (lambda **kw: V.TwinsSVTBlock(16, heads=2, window=4, sr_ratio=2, **kw), (2, 16, 8, 8)),
    "ChannelGroupAttention": (lambda **kw: V.ChannelGroupAttention(16, groups=4, **kw), (2, 16, 5, 6)),
    "SpatialWindowAttention": (lambda **kw: V.SpatialWindowAttention(16, heads=2, window=3, **kw), (2, 16, 6, 3)),
    "DualAttentionBlock": (lambda **kw: V.DualAttentionBlock(16, heads=2, groups=4, window=3, **kw), (2, 16, 6, 3)),
    "HaloAttention": (lambda **kw: V.HaloAttention(16, heads=2, block=4, halo=1, **kw), (2, 16, 8, 8)),
    "BiLevelRoutingAttention": (lambda **kw: V.BiLevelRoutingAttention(16, heads=2, n_win=2, top_k=2, side_dwconv=3, **kw),
                                (2, 16, 6, 8)),
    "SuperTokenAttention": (lambda **kw: V.SuperTokenAttention(16, heads=2, stoken=2, iters=2, **kw), (2, 16, 6, 8)),
}
