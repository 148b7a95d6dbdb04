"""ViT blocks against brute-force global attention with an explicit mask (float64)."""
import torch
import torch.nn.functional as F

from attnkit.nn import vision as V


def grid(H, W):
    return torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)


def masked_attention(q, k, v, allowed, bias=0.0, scale=1.0):
    s = (q @ k.transpose(-1, -2)) * scale + bias
    return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def heads(t, n):
    B, N, C = t.shape
    return t.reshape(B, N, n, C // n).transpose(1, 2)


def unheads(t):
    B, n, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, n * d)


def swin_brute_force(block, x):
    """Window attention over windows displaced by `shift` and truncated at the border; no roll, no mask trick."""
    B, C, H, W = x.shape
    M, s, n = block.window, block.shift, block.heads
    t = x.permute(0, 2, 3, 1)
    q, k, v = (heads(p, n) for p in block.qkv(block.norm1(t).reshape(B, H * W, C)).chunk(3, dim=-1))
    rows, cols = grid(H, W)
    wr, wc = (rows + M - s) // M, (cols + M - s) // M
    allowed = (wr[:, None] == wr[None]) & (wc[:, None] == wc[None])
    dy = (rows[:, None] - rows[None] + M - 1).clamp(0, 2 * M - 2)
    dx = (cols[:, None] - cols[None] + M - 1).clamp(0, 2 * M - 2)
    bias = block.bias_table[dy * (2 * M - 1) + dx].permute(2, 0, 1)
    o = masked_attention(q, k, v, allowed, bias, (C // n) ** -0.5)
    t = t + block.proj(unheads(o)).reshape(B, H, W, C)
    t = t + block.mlp(block.norm2(t))
    return t.permute(0, 3, 1, 2)


def test_swin_shifted_window_equals_brute_force_over_the_shifted_image():
    torch.manual_seed(0)
    for H, W, M, s in [(8, 8, 4, 2), (8, 12, 4, 1), (6, 6, 3, 0), (4, 4, 4, 2)]:
        block = V.SwinBlock(8, heads=2, window=M, shift=s).double()
        x = torch.randn(2, 8, H, W, dtype=torch.float64)
        torch.testing.assert_close(block(x), swin_brute_force(block, x), rtol=1e-10, atol=1e-10)


def test_twins_lsa_is_block_diagonal_attention():
    torch.manual_seed(1)
    layer = V.LocallyGroupedAttention(8, heads=2, window=3).double()
    x = torch.randn(2, 8, 6, 9, dtype=torch.float64)
    B, C, H, W = x.shape
    t = x.permute(0, 2, 3, 1)
    q, k, v = (heads(p, 2) for p in layer.qkv(layer.norm1(t).reshape(B, H * W, C)).chunk(3, dim=-1))
    rows, cols = grid(H, W)
    allowed = (rows[:, None] // 3 == rows[None] // 3) & (cols[:, None] // 3 == cols[None] // 3)
    t = t + layer.proj(unheads(masked_attention(q, k, v, allowed, scale=0.5))).reshape(B, H, W, C)
    expected = (t + layer.mlp(layer.norm2(t))).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_twins_gsa_attends_to_strided_conv_summary():
    torch.manual_seed(2)
    layer = V.GlobalSubsampledAttention(8, heads=2, sr_ratio=2).double()
    x = torch.randn(2, 8, 4, 6, dtype=torch.float64)
    B, C, H, W = x.shape
    t = x.permute(0, 2, 3, 1)
    n = layer.norm1(t)
    keys = layer.sr_norm(F.conv2d(n.permute(0, 3, 1, 2), layer.sr.weight, layer.sr.bias, stride=2).flatten(2).transpose(1, 2))
    assert keys.shape[1] == (H // 2) * (W // 2)
    q = heads(layer.q(n.reshape(B, H * W, C)), 2)
    k, v = (heads(p, 2) for p in layer.kv(keys).chunk(2, dim=-1))
    allowed = torch.ones(H * W, keys.shape[1], dtype=torch.bool)
    t = t + layer.proj(unheads(masked_attention(q, k, v, allowed, scale=0.5))).reshape(B, H, W, C)
    expected = (t + layer.mlp(layer.norm2(t))).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_davit_channel_attention_equation_and_global_reach():
    torch.manual_seed(3)
    block = V.ChannelGroupAttention(8, groups=2).double()
    t = torch.randn(2, 20, 8, dtype=torch.float64)
    q, k, v = block.qkv(t).chunk(3, dim=-1)
    outs = []
    for i in range(2):
        Qi, Ki, Vi = (z[..., 4 * i: 4 * i + 4] for z in (q, k, v))  # (B, P, C_g)
        A = torch.softmax(Qi.transpose(1, 2) @ Ki / 2.0, dim=-1)  # softmax(Q^T K / sqrt(C_g))
        outs.append((A @ Vi.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(block.channel_attention(t), block.proj(torch.cat(outs, -1)), rtol=1e-10, atol=1e-10)
    # one layer of channel attention reaches every position: perturb one token, all outputs move
    t2 = t.clone()
    t2[:, 0] += 1.0
    moved = (block.channel_attention(t2) - block.channel_attention(t)).abs().amax(dim=-1)
    assert (moved[:, 1:] > 1e-8).all()


def test_davit_spatial_block_is_block_diagonal_attention_between_cpes():
    torch.manual_seed(6)
    block = V.SpatialWindowAttention(8, heads=2, window=2).double()
    x = torch.randn(2, 8, 4, 6, dtype=torch.float64)
    B, C, H, W = x.shape
    x1 = x + block.cpe1(x)
    t = x1.flatten(2).transpose(1, 2)
    q, k, v = (heads(p, 2) for p in block.qkv(block.norm1(t)).chunk(3, dim=-1))
    rows, cols = grid(H, W)
    allowed = (rows[:, None] // 2 == rows[None] // 2) & (cols[:, None] // 2 == cols[None] // 2)
    t = t + block.proj(unheads(masked_attention(q, k, v, allowed, scale=0.5)))
    x2 = t.transpose(1, 2).reshape(B, C, H, W)
    x2 = x2 + block.cpe2(x2)
    t = x2.flatten(2).transpose(1, 2)
    expected = (t + block.mlp(block.norm2(t))).transpose(1, 2).reshape(B, C, H, W)
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)
    dual = V.DualAttentionBlock(8, heads=2, groups=2, window=2).double()
    torch.testing.assert_close(dual(x), dual.channel(dual.spatial(x)))


def test_halo_attention_equals_masked_attention_over_the_zero_padded_map():
    torch.manual_seed(4)
    for b, h in [(2, 1), (4, 2), (3, 0)]:
        m = V.HaloAttention(8, heads=2, block=b, halo=h).double()
        x = torch.randn(2, 8, 2 * b, 3 * b, dtype=torch.float64)
        B, C, H, W = x.shape
        n, d = 2, 4
        q = m.q(x).reshape(B, n, d, H * W).transpose(-1, -2) * d ** -0.5
        kv = m.kv(F.pad(x, (h, h, h, h))).reshape(B, 2, n, d, -1).transpose(-1, -2)
        qr, qc = grid(H, W)
        kr, kc = grid(H + 2 * h, W + 2 * h)
        top, left = (qr // b * b)[:, None], (qc // b * b)[:, None]
        allowed = (kr[None] >= top) & (kr[None] < top + b + 2 * h) & (kc[None] >= left) & (kc[None] < left + b + 2 * h)
        size = 2 * (b + h) - 1
        dr = (kr[None] - h - qr[:, None] + b + h - 1).clamp(0, size - 1)
        dc = (kc[None] - h - qc[:, None] + b + h - 1).clamp(0, size - 1)
        shape = (B, n, H * W, kr.numel())
        bias = torch.gather(q @ m.rel_h.T, -1, dr.expand(shape)) + torch.gather(q @ m.rel_w.T, -1, dc.expand(shape))
        o = masked_attention(q, kv[:, 0], kv[:, 1], allowed, bias)
        expected = o.transpose(-1, -2).reshape(B, n * d, H, W)
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_super_token_attention_equals_dense_association():
    torch.manual_seed(5)
    for s, iters, (H, W) in [(2, 1, (6, 8)), (2, 3, (4, 4)), (3, 2, (9, 6))]:
        m = V.SuperTokenAttention(8, heads=2, stoken=s, iters=iters).double()
        x = torch.randn(2, 8, H, W, dtype=torch.float64)
        B, C = x.shape[:2]
        X = x.flatten(2).transpose(1, 2)
        rows, cols = grid(H, W)
        si, sj = grid(H // s, W // s)
        near = ((rows[:, None] // s - si[None]).abs() <= 1) & ((cols[:, None] // s - sj[None]).abs() <= 1)
        S = F.avg_pool2d(x, s).flatten(2).transpose(1, 2)
        for _ in range(iters):
            A = torch.softmax((X @ S.transpose(1, 2) / C ** 0.5).masked_fill(~near, float("-inf")), dim=-1)
            S = (A.transpose(1, 2) @ X) / A.sum(dim=1)[..., None]
        q, k, v = (heads(p, 2) for p in m.qkv(S).chunk(3, dim=-1))
        S = m.proj(unheads(masked_attention(q, k, v, torch.ones(S.shape[1], S.shape[1], dtype=torch.bool), scale=0.5)))
        expected = (A @ S).transpose(1, 2).reshape(B, C, H, W)
        torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)
