"""Deconstructing Attention's variants: equations written out, pieces = one call, generate = recompute."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.models import DecoderLM, ModelConfig
from attnkit.models.deconstructed import GatedMLP, NonApproximate

from .lm_checks import assert_generate_equals_recompute

DIM, HEADS, HD = 16, 2, 8
FIXED = {"rnd_emb_qk": {"length": 24}, "fixed_seq_qk": {"tokens": list(range(3, 27))}}
KINDS = ["mlp", "non_approximate", "static_emb_qk", "rnd_emb_qk", "fixed_seq_qk"]


def lm(kind, schedule="FD", dtype=torch.float32):
    torch.manual_seed(0)
    mixers = {"F": "softmax", "D": {"deconstructed": kind, **FIXED.get(kind, {})}}
    return DecoderLM(ModelConfig(vocab_size=30, dim=DIM, heads=HEADS, schedule=schedule, mixers=mixers)).to(dtype).eval()


def test_non_approximate_is_equation_18():
    # o_i = sum_{j<=i} e^{s_j} v_j / sum_{j<=i} e^{s_j},  s_j = silu(q_j) . k_j / sqrt(d_h)
    torch.manual_seed(0)
    mod = NonApproximate(DIM, HEADS, HD).double()
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    q = F.silu(mod.q_proj(x)).unflatten(-1, (HEADS, HD))
    k, v = (p(x).unflatten(-1, (HEADS, HD)) for p in (mod.k_proj, mod.v_proj))
    s = (q * k).sum(-1) / math.sqrt(HD)  # (B, N, H)
    outs = []
    for i in range(x.shape[1]):
        w = torch.exp(s[:, :i + 1] - s[:, :i + 1].amax(1, keepdim=True))
        outs.append((w[..., None] * v[:, :i + 1]).sum(1) / w.sum(1)[..., None])
    want = mod.out_proj(torch.stack(outs, 1).flatten(2))
    assert (mod(x) - want).abs().max() < 1e-12


def test_the_mlp_has_attentions_parameter_count():
    mlp = GatedMLP(96, 6, 16)
    assert abs(sum(p.numel() for p in mlp.parameters()) - 4 * 96 * 96) <= 3 * 96


def _attention_block(block, x, qk):
    """One pre-norm block whose softmax attention takes Q, K from ``qk`` and V from the block's input."""
    mix = block.mixer
    heads = lambda t: t.unflatten(-1, (HEADS, HD)).transpose(1, 2)  # noqa: E731
    n = x.shape[1]
    pos = torch.arange(n)
    q, k = (mix.rope.rotate(heads(p(qk)), pos) for p in (mix.q_proj, mix.k_proj))
    v = heads(mix.v_proj(block.mixer_norm(x)))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(HD)).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    x = x + mix.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))
    return x + block.mlp(block.mlp_norm(x))


def test_rnd_emb_qk_takes_q_and_k_from_the_fixed_stream_below_it():
    model = lm("rnd_emb_qk", dtype=torch.float64)
    tokens = torch.randint(0, 30, (2, 9))
    b0, b1 = model.blocks
    f1 = b0(model.fixed_stream.eps, causal=True)  # the random sequence through the layers below
    x1 = b0(model.embed(tokens), causal=True)
    x2 = _attention_block(b1, x1, b1.mixer_norm(f1)[:, :9])
    assert (model(tokens) - model.head(model.norm(x2))).abs().max() < 1e-10


def test_static_emb_qk_takes_q_and_k_from_the_token_embeddings():
    model = lm("static_emb_qk", schedule="FD", dtype=torch.float64)
    tokens = torch.randint(0, 30, (2, 7))
    b0, b1 = model.blocks
    e = model.embed(tokens)
    x2 = _attention_block(b1, b0(e, causal=True), e)
    assert (model(tokens) - model.head(model.norm(x2))).abs().max() < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_pieces_equal_one_call_and_generate_equals_recompute(kind):
    model = lm(kind)
    tokens = torch.randint(0, 30, (2, 13))
    with torch.no_grad():
        full = model(tokens)
        pieces, state = [], None
        for a, b in ((0, 1), (1, 6), (6, 7), (7, 13)):
            out, new = model(tokens[:, a:b], state=state, return_state=True)
            if a == 6:
                again, _ = model(tokens[:, a:b], state=state, return_state=True)
                assert torch.equal(out, again)  # states are values
            pieces.append(out)
            state = new
        assert (torch.cat(pieces, 1) - full).abs().max() < 1e-5
    assert_generate_equals_recompute(model, tokens[:, :5], 6)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(schedule="D", mixers={"D": {"deconstructed": "mpl"}})
    with pytest.raises(ValueError, match="tokens"):
        ModelConfig(schedule="D", mixers={"D": {"deconstructed": "fixed_seq_qk", "tokens": [1, -2]}})
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig(schedule="D", mixers={"D": {"deconstructed": "mlp", "length": 3}})
    with pytest.raises(ValueError, match="one fixed Q/K sequence"):
        ModelConfig(schedule="DE", mixers={"D": {"deconstructed": "rnd_emb_qk"},
                                           "E": {"deconstructed": "fixed_seq_qk", "tokens": [1, 2]}})
    with pytest.raises(ValueError, match="exceed"):
        lm("rnd_emb_qk")(torch.randint(0, 30, (1, 25)))
    with pytest.raises(ValueError, match="Encoder"):
        from attnkit.models import Encoder
        Encoder(ModelConfig(schedule="D", mixers={"D": {"deconstructed": "mlp"}}))
