"""Properties the channel/spatial attention papers state, checked on small float64 maps."""
import pytest
import torch
import torch.nn.functional as F

from attnkit.nn import vision as V


def positive(*shape):
    return torch.rand(*shape, dtype=torch.float64) + 0.5


def test_squeeze_excitation_rescales_channels_only():
    torch.manual_seed(0)
    x = positive(2, 16, 5, 6)
    ratio = V.SqueezeExcitation(16, 4).double()(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert ((ratio > 0) & (ratio < 1)).all()


def test_eca_is_local_across_channels():
    torch.manual_seed(1)
    eca = V.ECA(64).double()  # k = 3: channel c's weight depends on channels c-1, c, c+1 only
    x = positive(1, 64, 4, 4)
    x2 = x.clone()
    x2[:, 10] += 1.0
    changed = ((eca(x2) / x2 - eca(x) / x).abs().amax(dim=(0, 2, 3)) > 1e-12).nonzero().flatten().tolist()
    assert changed == [9, 10, 11]


def test_cbam_channel_then_spatial():
    torch.manual_seed(2)
    m = V.CBAM(8, reduction=2).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    mc = torch.sigmoid(m._mlp(x.mean((2, 3))) + m._mlp(x.amax((2, 3))))[:, :, None, None]
    f = mc * x
    ms = torch.sigmoid(F.conv2d(torch.cat([f.mean(1, keepdim=True), f.amax(1, keepdim=True)], 1), m.spatial.weight, padding=3))
    torch.testing.assert_close(m(x), ms * f)


def test_ulsam_maps_are_softmax_over_space_per_subspace():
    torch.manual_seed(3)
    x = positive(2, 16, 5, 6)
    a = (V.ULSAM(16, groups=4).double()(x) - x) / x  # F^ = A F + F
    a = a.reshape(2, 4, 4, 30)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(a, a[:, :, :1].expand_as(a))  # one map per subspace


@pytest.mark.parametrize("make", [lambda: V.EfficientLocalAttention(16, 5, 4), lambda: V.CoordinateAttention(16)])
def test_ela_and_coordinate_gates_factorise_into_row_times_column(make):
    torch.manual_seed(4)
    m = make().double().eval()
    x = positive(2, 16, 5, 6)
    r = m(x) / x  # = g_h[c, i] * g_w[c, j]
    torch.testing.assert_close(r * r[:, :, :1, :1], r[:, :, :, :1] * r[:, :, :1, :])


def test_triplet_spatial_branch_is_channel_constant_and_branches_average():
    torch.manual_seed(5)
    m = V.TripletAttention(6).double().eval()
    x = positive(2, 6, 5, 7)
    r = m.hw(x) / x
    torch.testing.assert_close(r, r[:, :1].expand_as(r))
    torch.testing.assert_close(
        m(x), (m.cw(x.transpose(1, 2)).transpose(1, 2) + m.hc(x.transpose(1, 3)).transpose(1, 3) + m.hw(x)) / 3
    )


def test_polarized_branches_collapse_one_dimension_each():
    torch.manual_seed(6)
    m = V.PolarizedSelfAttention(16).double()
    x = positive(2, 16, 5, 6)
    ch, sp = m.channel_only(x) / x, m.spatial_only(x) / x
    torch.testing.assert_close(ch, ch[:, :, :1, :1].expand_as(ch))  # a C x 1 x 1 map
    torch.testing.assert_close(sp, sp[:, :1].expand_as(sp))  # a 1 x H x W map
    torch.testing.assert_close(m(x), m.channel_only(x) + m.spatial_only(x))
    seq = V.PolarizedSelfAttention(16, layout="sequential").double()
    seq.load_state_dict(m.state_dict())
    torch.testing.assert_close(seq(x), m.spatial_only(m.channel_only(x)))


@pytest.mark.parametrize("radix, cardinality", [(2, 1), (4, 2), (1, 2)])
def test_split_attention_weights_are_a_softmax_over_the_radix(radix, cardinality):
    torch.manual_seed(7)
    m = V.SplitAttention(16, 16, radix=radix, cardinality=cardinality).double()
    a = m.split_weights(torch.randn(3, 16, 1, 1, dtype=torch.float64))
    assert a.shape == (3, radix, 16)
    if radix > 1:
        torch.testing.assert_close(a.sum(1), torch.ones(3, 16, dtype=torch.float64))
    assert ((a > 0) & (a < 1)).all()


def test_residual_attention_is_trunk_when_mask_vanishes_and_at_most_twice_it():
    torch.manual_seed(8)
    m = V.ResidualAttention(8, depth=2).double().eval()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    h = m.pre(x)
    M, T = m.mask(h), m.trunk(h)
    assert ((M > 0) & (M < 1)).all()
    torch.testing.assert_close(m(x), m.post((1 + M) * T))
    with torch.no_grad():
        m.head[-1].weight.zero_()
        m.head[-1].bias.fill_(-1e4)
    torch.testing.assert_close(m(x), m.post(m.trunk(m.pre(x))), rtol=0, atol=0)


def test_large_kernel_attention_covers_a_dense_receptive_field_of_at_least_K():
    torch.manual_seed(9)
    m = V.LargeKernelAttention(2, kernel_size=21, dilation=3).double()
    x = torch.randn(1, 2, 31, 31, dtype=torch.float64, requires_grad=True)
    attn = m.pw(m.dw_dilated(m.dw(x)))
    attn[0, 0, 15, 15].backward()
    support = x.grad[0].abs().sum(0) > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    span = (2 * 3 - 2) + (7 - 1) * 3 + 1  # (2d-1) kernel, then ceil(K/d) taps d apart
    assert rows.numel() == cols.numel() == span == 23 and span >= 21
    assert support[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].all()  # dense, no holes


def test_non_local_block_is_identity_at_init_and_embedded_gaussian_after():
    torch.manual_seed(10)
    m = V.NonLocalBlock(8).double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)
    with torch.no_grad():
        m.bn.weight.fill_(1.0)
    m.eval()
    theta, phi, g = (c(x).flatten(2) for c in (m.theta, m.phi, m.g))  # (B, C/2, N)
    f = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
    y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(2, 4, 4, 5)
    torch.testing.assert_close(m(x), m.bn(m.w_z(y)) + x)


def test_ulsam_separable_max_pool_equals_torch_max_pool():
    from attnkit.nn.vision.ulsam import max_pool_3x3

    x = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(max_pool_3x3(x), F.max_pool2d(x, 3, stride=1, padding=1), rtol=0, atol=0)
