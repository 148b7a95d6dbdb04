"""JetBlock against a float64 reference of its equations; incremental calls; Jet-Nemotron-2B's placement."""
import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.models import DecoderLM, ModelConfig
from attnkit.models.jetblock import JET_NEMOTRON_2B, JetBlock, jet_nemotron_config

from .lm_checks import assert_generate_equals_recompute


def reference(block, x):
    """The equations token by token: dynamic kernels from x_t, the causal convolution of the values
    as an explicit sum over the last w inputs, gates, the gated delta rule's reference form, gated norm."""
    B, N, _ = x.shape
    H, D, Dv, w = block.heads, block.head_dim, block.v_head_dim, block.conv_size
    u = block.v_proj(x)
    rows = []
    for t in range(N):
        K = (block.kernel_up(F.silu(block.kernel_down(x[:, t])))).unflatten(-1, (-1, w))  # (B, value_dim, w)
        acc = torch.zeros_like(u[:, t])
        for j in range(w):
            s = t - w + 1 + j
            if s >= 0:
                acc = acc + K[..., j] * u[:, s]
        rows.append(F.silu(acc))
    v = torch.stack(rows, 1).unflatten(-1, (H, Dv)).transpose(1, 2)
    q = F.silu(block.q_proj(x)).unflatten(-1, (H, D)).transpose(1, 2)
    k = F.silu(block.k_proj(x)).unflatten(-1, (H, D)).transpose(1, 2)
    beta = torch.sigmoid(block.b_proj(x)).transpose(1, 2)
    g = (-block.A_log.exp() * F.softplus(block.a_proj(x) + block.dt_bias)).transpose(1, 2)
    o = attnkit.attention(q, k, v, "gated_deltanet", causal=True, beta=beta, g=g, form="reference")
    o = block.o_norm(o.transpose(1, 2)) * F.silu(block.g_proj(x)).unflatten(-1, (H, Dv))
    return block.o_proj(o.flatten(2))


def make(**kw):
    torch.manual_seed(0)
    block = JetBlock(16, 2, 8, **kw)
    for p in (block.kernel_down.weight, block.kernel_up.weight):  # away from the zero start
        torch.nn.init.normal_(p, std=0.3)
    return block


def test_jetblock_matches_its_equations_in_float64():
    block = make(conv_size=3, reduction=4, expand_v=2).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        assert (block(x, causal=True) - reference(block, x)).abs().max() < 1e-10


def test_incremental_calls_equal_one_call():
    block = make().eval()
    x = torch.randn(1, 13, 16)
    with torch.no_grad():
        full = block(x, causal=True)
        pieces, state = [], None
        for a, b in ((0, 2), (2, 3), (3, 9), (9, 13)):
            out, state = block(x[:, a:b], causal=True, state=state, return_state=True)
            pieces.append(out)
    assert state.length == 13 and state.window.shape == (1, 3, 2 * 8 * 2)
    assert (torch.cat(pieces, 1) - full).abs().max() < 1e-5


def test_jet_nemotron_placement_and_lm_generation():
    cfg = jet_nemotron_config(vocab_size=20, dim=16, heads=2, window=4)
    assert cfg.schedule == JET_NEMOTRON_2B and len(JET_NEMOTRON_2B) == 28
    assert [i + 1 for i, c in enumerate(JET_NEMOTRON_2B) if c != "J"] == [15, 20, 21, 22]
    torch.manual_seed(1)
    lm = DecoderLM(ModelConfig(vocab_size=20, dim=16, heads=2, schedule="JFJ",
                               mixers={"J": {"jetblock": {"conv_size": 3}}, "F": "softmax"})).eval()
    prompt = torch.randint(0, 20, (2, 4))
    assert_generate_equals_recompute(lm, prompt, 5)


def test_errors_name_the_option():
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig(schedule="J", mixers={"J": {"jetblock": {"size": 3}}})
    with pytest.raises(ValueError, match="conv_size"):
        ModelConfig(schedule="J", mixers={"J": {"jetblock": {"conv_size": 0}}})
    with pytest.raises(ValueError, match="causal"):
        make()(torch.randn(1, 3, 16))
