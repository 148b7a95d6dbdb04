"""The papers' blocks around the linear mechanisms (Mamba-2, RetNet MSR, FLatten, Agent attention).

Each block against a float64 reference written here from the paper's equations
(token loops and materialised matrices, not attnkit.attention), and decoding in
pieces (token by token and uneven splits) equal to one call.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.nn.agent import AgentAttention
from attnkit.nn.flatten import FocusedLinearAttention
from attnkit.nn.mamba2 import Mamba2Layer
from attnkit.nn.nystromformer import NystromAttention
from attnkit.nn.retention import MultiScaleRetention
from attnkit.nn.token_conv import TokenConv

N = 13


def _x(dim, n=N, seed=0):
    return torch.randn(2, n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _layers():
    torch.manual_seed(0)
    return {
        "mamba2": Mamba2Layer(16, head_dim=8, state_dim=6, chunk_size=4).double(),
        "mamba2_groups": Mamba2Layer(16, head_dim=4, state_dim=6, chunk_size=4, groups=4).double(),
        "retention": MultiScaleRetention(16, 4, chunk_size=4).double(),
        "flatten": FocusedLinearAttention(16, 4, chunk_size=4).double(),
    }


def _call(name, layer, x, **kw):
    return layer(x, **kw) if name.startswith("mamba2") else layer(x, causal=True, **kw)


@pytest.mark.parametrize("name", ["mamba2", "mamba2_groups", "retention", "flatten"])
@pytest.mark.parametrize("cuts", [list(range(1, N)), [5, 6, 11]])
def test_decoding_in_pieces_equals_one_call(name, cuts):
    layer = _layers()[name]
    x = _x(16)
    whole = _call(name, layer, x)
    outs, state = [], None
    for a, b in zip([0, *cuts], [*cuts, N]):
        out, state = _call(name, layer, x[:, a:b], state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, rtol=1e-12, atol=1e-12)
    assert state.length == N


def _causal_conv(x, weight, bias):
    """Depthwise causal conv from its definition: y_t = b + sum_j w_j x_{t - K + 1 + j}."""
    K = weight.shape[-1]
    padded = F.pad(x, (0, 0, K - 1, 0))
    return bias + sum(weight[:, 0, j] * padded[:, j : j + x.shape[1]] for j in range(K))


@pytest.mark.parametrize("groups", [1, 2])
def test_mamba2_layer_is_the_papers_block(groups):
    torch.manual_seed(0)
    layer = Mamba2Layer(16, head_dim=8, state_dim=6, chunk_size=4, groups=groups).double()
    x = _x(16)
    H, P, S, G = layer.heads, layer.head_dim, layer.state_dim, groups
    z, xBC = layer.in_proj(x).split([layer.inner, layer.inner + 2 * G * S], dim=-1)
    conv = F.silu(_causal_conv(xBC, layer.conv.weight, layer.conv.bias))
    xs, Bm, Cm = conv.split([layer.inner, G * S, G * S], dim=-1)
    xs = xs.unflatten(-1, (H, P))
    group_of_head = torch.arange(H) // (H // G)  # mamba_ssm: head h reads group h // (heads / ngroups)
    Bm, Cm = (t.unflatten(-1, (G, S))[:, :, group_of_head] for t in (Bm, Cm))  # (B, N, H, S)
    dt = F.softplus(layer.gate.proj(x) + layer.gate.dt_bias)
    A = -torch.exp(layer.gate.A_log)
    h = torch.zeros(2, H, S, P, dtype=torch.float64)
    ys = []
    for t in range(N):  # h_t = exp(dt A) h + dt B^T x,  y = C h + D x
        write = dt[:, t, :, None, None] * Bm[:, t, :, :, None] * xs[:, t, :, None]  # (B, H, S, P)
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + write
        ys.append(torch.einsum("bhs,bhsp->bhp", Cm[:, t], h) + layer.D[:, None] * xs[:, t])
    y = torch.stack(ys, dim=1).flatten(2) * F.silu(z)
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
    torch.testing.assert_close(layer(x), layer.out_proj(y), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="groups"):
        Mamba2Layer(16, head_dim=8, groups=3)


def test_mamba2_dt_limit_clamps_the_step_sizes():
    torch.manual_seed(0)
    layer = Mamba2Layer(16, head_dim=8, state_dim=6, chunk_size=4, dt_limit=(0.05, 0.06)).double()
    x = _x(16)
    q = torch.zeros(2, layer.heads, N, 6, dtype=torch.float64)
    dt = layer.gate(x, q, q, q)["dt"]
    assert dt.min() >= 0.05 and dt.max() <= 0.06
    assert ((dt == 0.05) | (dt == 0.06)).any()  # some step sizes were clamped
    free = Mamba2Layer(16, head_dim=8, state_dim=6, chunk_size=4).double()
    free.load_state_dict(layer.state_dict())
    assert not torch.allclose(free(x), layer(x))
    with pytest.raises(ValueError, match="dt_limit"):
        Mamba2Layer(16, head_dim=8, dt_limit=(0.1, 0.01))


def test_retention_layer_is_the_papers_msr():
    torch.manual_seed(1)
    layer = MultiScaleRetention(16, 4, rope=False, chunk_size=4).double()
    x = _x(16)
    q, k, v = (t.unflatten(-1, (4, 4)).transpose(1, 2) for t in (layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)))
    gamma = 1 - 2.0 ** (-5 - torch.arange(4, dtype=torch.float64))
    n = torch.arange(N)
    D = torch.where(n[:, None] >= n[None, :], gamma[:, None, None] ** (n[:, None] - n[None, :]), 0.0)
    heads = ((q @ k.transpose(-1, -2)) * 4**-0.5 * D) @ v  # (B, h, N, d)
    Y = F.group_norm(heads.transpose(1, 2).flatten(0, 1).flatten(1), 4, layer.group_norm.weight, layer.group_norm.bias,
                     eps=1e-5).view(2, N, 16)
    expected = layer.out_proj(F.silu(layer.gate(x)) * Y)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def _focused(x, scale, p=3.0):
    x = (F.relu(x) + 1e-6) / scale[:, None]
    return x**p * x.norm(dim=-1, keepdim=True) / (x**p).norm(dim=-1, keepdim=True)


def test_flatten_layer_is_focused_attention_plus_dwc():
    layer = _layers()["flatten"]
    x = _x(16)
    q, k, v = (t.unflatten(-1, (4, 4)).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=-1))
    s = F.softplus(layer.scale)
    fq, fk = _focused(q, s), _focused(k, s)
    seen = torch.arange(1, N + 1, dtype=torch.float64)[:, None]
    A = (fq @ fk.transpose(-1, -2)).tril()
    attn = (A @ v) / (A.sum(-1, keepdim=True) + 1e-6 * seen)
    conv = _causal_conv(v.flatten(0, 1), layer.dwc.weight, layer.dwc.bias).view_as(v)
    expected = layer.proj((attn + conv).transpose(1, 2).flatten(2))
    torch.testing.assert_close(layer(x, causal=True), expected, rtol=1e-10, atol=1e-10)


def test_flatten_grid_adds_the_papers_2d_dwc():
    torch.manual_seed(2)
    layer = FocusedLinearAttention(16, 4, grid=(3, 4)).double()
    x = _x(16, n=12)
    v = layer.qkv(x)[..., 32:].unflatten(-1, (4, 4)).transpose(1, 2)  # (B, heads, 12, 4)
    img = v.reshape(8, 3, 4, 4).permute(0, 3, 1, 2)  # each head an image with head_dim channels, shared conv
    conv = F.conv2d(img, layer.dwc.weight, layer.dwc.bias, padding=2, groups=4).permute(0, 2, 3, 1).reshape(2, 4, 12, 4)
    with_dwc = layer(x)
    torch.nn.init.zeros_(layer.dwc.weight)
    torch.nn.init.zeros_(layer.dwc.bias)
    expected = with_dwc - conv.transpose(1, 2).flatten(2) @ layer.proj.weight.T  # proj is affine
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="causal"):
        layer(x, causal=True)
    with pytest.raises(ValueError, match="grid"):
        layer(_x(16, n=11))


def test_agent_layer_is_the_papers_block():
    torch.manual_seed(3)
    layer = AgentAttention(16, 2, (4, 6), agents=4).double()
    x = _x(16, n=24)
    q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=-1))
    grid_q = q.reshape(2, 2, 4, 6, 8)  # a 2 x 2 pool of a 4 x 6 grid: blocks of 2 x 3 queries
    a = grid_q.unflatten(2, (2, 2)).unflatten(4, (2, 3)).mean(dim=(3, 5)).reshape(2, 2, 4, 8)
    b1, b2 = layer.biases()
    assert b1.shape == (2, 4, 24) and b2.shape == (2, 24, 4)
    v_a = ((a @ k.transpose(-1, -2)) / 8**0.5 + b1).softmax(-1) @ v
    out = ((q @ a.transpose(-1, -2)) / 8**0.5 + b2).softmax(-1) @ v_a
    img = v.transpose(1, 2).flatten(2).transpose(1, 2).reshape(2, 16, 4, 6)
    conv = F.conv2d(img, layer.dwc.weight, layer.dwc.bias, padding=1, groups=16).flatten(2).transpose(1, 2)
    expected = layer.proj(out.transpose(1, 2).flatten(2) + conv)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def _agent_outputs(layer, q, k, v, b1, b2):
    """The two softmaxes of agent attention as the authors' code writes them (scale 1/sqrt(d))."""
    H, D = layer.heads, q.shape[-1]
    grid_q = q[:, :, q.shape[2] - 16 :].reshape(2, H, 2, 2, 2, 2, D)  # 4 x 4 grid pooled to 2 x 2 agents
    a = grid_q.mean(dim=(3, 5)).reshape(2, H, 4, D)
    v_a = ((a @ k.transpose(-1, -2)) / D**0.5 + b1).softmax(-1) @ v
    return (((q @ a.transpose(-1, -2)) / D**0.5 + b2).softmax(-1) @ v_a).transpose(1, 2).flatten(2)


def _grid_biases(layer, key_grid):
    b1 = F.interpolate(layer.agent_block, size=key_grid, mode="bilinear") + layer.agent_row + layer.agent_col
    b2 = F.interpolate(layer.query_block, size=(4, 4), mode="bilinear").permute(0, 2, 3, 1)
    return b1.reshape(2, 4, -1), (b2 + layer.query_row + layer.query_col).reshape(2, 16, 4)


def test_agent_pvt_variant_reduces_keys_and_upsamples_v_for_the_dwc():
    torch.manual_seed(5)
    layer = AgentAttention(16, 2, (4, 4), agents=4, reduction=2).double()
    x = _x(16, n=16)
    wq, wkv = layer.qkv.weight.split([16, 32])
    bq, bkv = layer.qkv.bias.split([16, 32])
    reduced = layer.reduce(x.transpose(1, 2).reshape(2, 16, 4, 4)).flatten(2).transpose(1, 2)  # 2 x 2 keys
    k, v = (layer.reduce_norm(reduced) @ wkv.T + bkv).chunk(2, dim=-1)
    q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in (x @ wq.T + bq, k, v))
    b1, b2 = _grid_biases(layer, (2, 2))
    out = _agent_outputs(layer, q, k, v, b1, b2)
    v_img = F.interpolate(v.transpose(1, 2).flatten(2).transpose(1, 2).reshape(2, 16, 2, 2), size=(4, 4),
                          mode="bilinear")
    conv = F.conv2d(v_img, layer.dwc.weight, layer.dwc.bias, padding=1, groups=16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(layer(x), layer.proj(out + conv), rtol=1e-10, atol=1e-10)


def test_agent_deit_variant_keeps_the_class_token_out_of_the_grid():
    torch.manual_seed(6)
    layer = AgentAttention(16, 2, (4, 4), agents=4, class_token=True).double()
    x = _x(16, n=17)
    q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=-1))
    b1, b2 = _grid_biases(layer, (4, 4))
    b1 = torch.cat([layer.agent_to_class, b1], dim=-1)  # the class token's key: its own bias per agent
    b2 = torch.cat([layer.class_to_agent, b2], dim=-2)  # the class token's query: its own bias per agent
    out = _agent_outputs(layer, q, k, v, b1, b2)
    img = v[:, :, 1:].transpose(1, 2).flatten(2).transpose(1, 2).reshape(2, 16, 4, 4)
    conv = F.conv2d(img, layer.dwc.weight, layer.dwc.bias, padding=1, groups=16).flatten(2).transpose(1, 2)
    out = torch.cat([out[:, :1], out[:, 1:] + conv], dim=1)  # no convolution for the class token
    torch.testing.assert_close(layer(x), layer.proj(out), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="class token"):
        layer(x[:, 1:])


def test_blocks_refuse_bad_arguments():
    with pytest.raises(ValueError, match="agents"):
        AgentAttention(16, 2, (4, 4), agents=5)
    with pytest.raises(TypeError, match="grid"):
        AgentAttention(16, 2, 16)
    with pytest.raises(ValueError, match="reduction"):
        AgentAttention(16, 2, (4, 6), agents=4, reduction=4)
    with pytest.raises(ValueError, match="variants"):
        AgentAttention(16, 2, (4, 4), agents=4, reduction=2, class_token=True)
    with pytest.raises(ValueError, match="head_dim"):
        Mamba2Layer(16, head_dim=12)
    with pytest.raises(ValueError, match="causal"):
        MultiScaleRetention(16, 4)(_x(16), causal=False)
    with pytest.raises(TypeError, match="state"):
        Mamba2Layer(16, head_dim=8)(_x(16).float(), state=object())
    conv = TokenConv(4, 3)
    with pytest.raises(ValueError, match="state"):
        conv(torch.randn(1, 5, 4), causal=True, state=torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="odd kernel_size"):
        TokenConv(4, 4)(torch.randn(1, 5, 4), causal=False)


def test_causal_token_conv_ignores_the_future():
    conv = TokenConv(3, 4).double()
    x = _x(3)
    y = conv(x, causal=True)[0]
    x2 = x.clone()
    x2[:, 7:] += 1.0
    torch.testing.assert_close(conv(x2, causal=True)[0][:, :7], y[:, :7])
    assert (conv(x2, causal=True)[0][:, 7:] - y[:, 7:]).abs().min() > 0


def test_flatten_key_position_embedding_is_added_to_k_and_decodes():
    torch.manual_seed(3)
    layer = FocusedLinearAttention(16, 4, chunk_size=4, positions=N).double()
    with torch.no_grad():
        layer.key_positions.normal_()
    x = _x(16)
    whole = layer(x, causal=True)
    # The same layer without the embedding, its qkv projection adding the embedding to the K third only.
    plain = FocusedLinearAttention(16, 4, chunk_size=4).double()
    plain.load_state_dict({n: t for n, t in layer.state_dict().items() if n != "key_positions"})
    added = F.pad(layer.key_positions, (16, 16))
    plain.qkv.register_forward_hook(lambda module, inputs, out: out + added[:, : out.shape[1]])
    torch.testing.assert_close(whole, plain(x, causal=True), rtol=1e-12, atol=1e-12)
    outs, state = [], None
    for a, b in zip([0, 5, 6], [5, 6, N]):
        out, state = layer(x[:, a:b], causal=True, state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="positions"):
        layer(x[:, :1], causal=True, state=state)
    with pytest.raises(ValueError, match="positions"):
        FocusedLinearAttention(16, 4, positions=0)


def test_nystrom_block_adds_the_papers_skip_convolution_on_v():
    torch.manual_seed(4)
    layer = NystromAttention(16, 4, landmarks=4, conv_kernel=5).double()
    x = _x(16, n=12)
    q, k, v = (t.unflatten(-1, (4, 4)).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=-1))
    attn = attnkit.attention(q, k, v, "nystromformer", causal=False, landmarks=4, iterations=6)
    w = layer.conv.weight[:, 0, :, 0]  # (heads, 5): one filter per head along the sequence
    padded = F.pad(v, (0, 0, 2, 2))
    conv = sum(w[None, :, j, None, None] * padded[:, :, j : j + 12] for j in range(5))
    expected = layer.proj((attn + conv).transpose(1, 2).flatten(2))
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    plain = NystromAttention(16, 4, landmarks=4, conv_kernel=None).double()
    assert plain.conv is None and plain(x).shape == x.shape
    with pytest.raises(ValueError, match="conv_kernel"):
        NystromAttention(16, 4, conv_kernel=4)
