"""Each module's parameter count against the formula its paper states (or its definition implies)."""
import math

import pytest

from attnkit.nn import vision as V


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp(dim, ratio=4.0):
    hidden = int(dim * ratio)
    return dim * hidden + hidden + hidden * dim + dim


@pytest.mark.parametrize("C, r", [(64, 16), (256, 16), (32, 8)])
def test_squeeze_excitation_is_2C2_over_r(C, r):
    assert count(V.SqueezeExcitation(C, r, bias=False)) == 2 * C * C // r
    assert count(V.SqueezeExcitation(C, r)) == 2 * C * C // r + C // r + C


def test_cbam_is_shared_mlp_plus_spatial_kernel():
    C, r, k = 64, 16, 7
    assert count(V.CBAM(C, r, k)) == 2 * C * C // r + C // r + C + 2 * k * k


@pytest.mark.parametrize("C, k", [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel_and_k_parameters(C, k):
    assert V.eca_kernel_size(C) == k
    t = (math.log2(C) + 1) / 2  # psi(C) before rounding to odd, gamma = 2, b = 1
    assert k % 2 == 1 and abs(k - t) <= 1
    module = V.ECA(C)
    assert module.kernel_size == k and count(module) == k


def test_eca_resnet50_claim_80_parameters():
    # ResNet-50: 3, 4, 6, 3 bottlenecks with 256, 512, 1024, 2048 output channels, one ECA each.
    # The released ECA-Net50 ("k3557") uses kernel sizes 3, 5, 5, 7 per stage: 80 parameters,
    # the abstract's figure. psi(C) itself gives 5, 5, 5, 7 (86 parameters); see docs/vision.md.
    stages = [(256, 3, 3), (512, 4, 5), (1024, 6, 5), (2048, 3, 7)]
    assert sum(n * count(V.ECA(C, kernel_size=k)) for C, n, k in stages) == 80
    assert sum(n * count(V.ECA(C)) for C, n, _ in stages) == 86


def test_triplet_is_three_gates_of_2k2_plus_batchnorm():
    assert count(V.TripletAttention(64, kernel_size=7)) == 3 * (2 * 49 + 2) == 300


@pytest.mark.parametrize("C, g", [(64, 4), (32, 8), (16, 1)])
def test_ulsam_is_2C_weights(C, g):
    assert count(V.ULSAM(C, g, bias=False)) == 2 * C
    assert count(V.ULSAM(C, g)) == 2 * C + C + g


def test_ela_is_Ck_plus_groupnorm():
    C, k = 64, 7
    assert count(V.EfficientLocalAttention(C, k, groups=16)) == C * k + 2 * C


@pytest.mark.parametrize("C", [16, 64, 512])
def test_coordinate_attention(C):
    mip = max(8, C // 32)
    assert count(V.CoordinateAttention(C)) == (C + 1) * mip + 2 * mip + 2 * (mip + 1) * C


def test_polarized_self_attention():
    C = 16
    h = C // 2
    channel = (C * h + h) + (C + 1) + (h * C + C) + 2 * C
    spatial = 2 * (C * h + h)
    assert count(V.PolarizedSelfAttention(C)) == channel + spatial


def test_split_attention():
    Cin, C, k, R, K = 64, 64, 3, 2, 2
    d = max(Cin * R // 4, 32)
    expected = Cin * k * k * C // K + 2 * R * C + (C // K) * d + d + 2 * d + (d // K) * R * C + R * C
    assert count(V.SplitAttention(Cin, C, k, radix=R, cardinality=K)) == expected


def test_large_kernel_attention_matches_van_formula():
    C, K, d = 32, 21, 3
    weights = sum(p.numel() for n, p in V.LargeKernelAttention(C, K, d).named_parameters() if n.endswith("weight"))
    assert weights == C * (math.ceil(K / d) ** 2 + (2 * d - 1) ** 2) + C * C
    assert count(V.LargeKernelAttention(C, K, d)) == weights + 3 * C
    assert weights == 3392  # the figure quoted for a 32-channel K=21 LKA by the D2LK paper (Cheung et al., 2025)


def test_non_local_block():
    C = 32
    i = C // 2
    assert count(V.NonLocalBlock(C)) == 3 * (C * i + i) + (i * C + C) + 2 * C


def test_residual_attention_unit_count():
    C, p, t, r, depth = 16, 1, 2, 1, 3
    m = C // 4
    unit = 2 * C + C * m + 2 * m + 9 * m * m + 2 * m + m * C
    head = 2 * (2 * C + C * C + C)
    units = 2 * p + t + 2 * depth * r + depth - 1
    assert count(V.ResidualAttention(C, p, t, r, depth)) == units * unit + head


def test_swin_block():
    dim, heads, M = 32, 4, 7
    attn = 3 * dim * dim + 3 * dim + dim * dim + dim + (2 * M - 1) ** 2 * heads
    assert count(V.SwinBlock(dim, heads, M, shift=3)) == 4 * dim + attn + mlp(dim)


def test_twins_layers():
    dim, heads, s = 32, 4, 2
    lsa = 4 * dim + 3 * dim * dim + 3 * dim + dim * dim + dim + mlp(dim)
    gsa = 4 * dim + (dim * dim + dim) + (2 * dim * dim + 2 * dim) + dim * dim + dim + mlp(dim) + dim * dim * s * s + dim + 2 * dim
    assert count(V.LocallyGroupedAttention(dim, heads, 4)) == lsa
    assert count(V.GlobalSubsampledAttention(dim, heads, s)) == gsa
    assert count(V.TwinsSVTBlock(dim, heads, 4, s)) == lsa + gsa


def test_davit_blocks():
    dim = 32
    block = 2 * (9 * dim + dim) + 4 * dim + 4 * dim * dim + 4 * dim + mlp(dim)  # 2 CPEs, 2 LNs, qkv + proj, MLP
    assert count(V.ChannelGroupAttention(dim, groups=4)) == block
    assert count(V.SpatialWindowAttention(dim, heads=4, window=7)) == block
    assert count(V.DualAttentionBlock(dim, heads=4, groups=4)) == 2 * block


def test_halo_attention():
    dim, heads, b, h = 32, 4, 4, 2
    dh = dim // heads
    assert count(V.HaloAttention(dim, heads, b, h)) == 3 * dim * heads * dh + 2 * (2 * (b + h) - 1) * dh


def test_super_token_attention_parameters_are_only_the_super_token_mhsa():
    dim = 32
    assert count(V.SuperTokenAttention(dim, heads=4)) == 4 * dim * dim + 4 * dim


@pytest.mark.parametrize("dim, heads, k", [(64, 2, 5), (96, 3, 3)])
def test_bilevel_routing_is_qkv_output_and_lce_convolutions(dim, heads, k):
    # 1x1 qkv (3 dim^2 + 3 dim), 1x1 output (dim^2 + dim), depth-wise k x k LCE (dim k^2 + dim); no routing weights
    module = V.BiLevelRoutingAttention(dim, heads, n_win=7, top_k=4, side_dwconv=k)
    assert count(module) == 4 * dim * dim + 5 * dim + dim * k * k
