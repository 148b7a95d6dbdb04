"""attnkit.nn.Attention: matches the equations, GQA/MQA structure, incremental decoding, cross-attention."""
from __future__ import annotations

import math

import pytest
import torch

from attnkit.nn import Attention

torch.manual_seed(0)


def _manual(layer, x, context=None, causal=False):
    """Multi-head attention written out: project, softmax(q k^T / sqrt(d)) v per head, project back."""
    B, N, _ = x.shape
    ctx = x if context is None else context
    H, Hkv, D = layer.heads, layer.kv_heads, layer.head_dim
    q = layer.q_proj(x).view(B, N, H, D).transpose(1, 2)
    k = layer.k_proj(ctx).view(B, -1, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = layer.v_proj(ctx).view(B, -1, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    o = s.softmax(-1) @ v
    return layer.out_proj(o.transpose(1, 2).reshape(B, N, H * D))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_written_out_multi_head_attention(kv_heads, causal):
    layer = Attention(32, 4, kv_heads=kv_heads, bias=True).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x, causal=causal), _manual(layer, x, causal=causal))


def test_cross_attention_matches_written_out_form_and_context_dim():
    layer = Attention(32, 4, context_dim=12).double()
    x, mem = torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(2, 11, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x, mem), _manual(layer, x, mem))


def test_mqa_is_gqa_with_one_group_and_gqa_is_mha_with_shared_kv_weights():
    gqa = Attention(32, 4, kv_heads=2).double()
    mha = Attention(32, 4).double()
    mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
    mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    for name in ("k_proj", "v_proj"):  # kv head j serves query heads 2j, 2j+1
        w = getattr(gqa, name).weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32)
        getattr(mha, name).weight.data.copy_(w)
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    torch.testing.assert_close(gqa(x, causal=True), mha(x, causal=True))
    mqa = Attention(32, 4, kv_heads=1)
    assert mqa.k_proj.out_features == 8 and mqa.v_proj.out_features == 8


@pytest.mark.parametrize("mechanism,params", [("softmax", {}), ("alibi", {}), ("softcap", {"cap": 5.0})])
def test_incremental_decoding_equals_one_shot_with_rope_and_qk_norm(mechanism, params):
    layer = Attention(32, 4, kv_heads=2, mechanism=mechanism, rope=True, qk_norm=True, **params).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    whole = layer(x, causal=True)
    out, state = layer(x[:, :4], causal=True, return_state=True)
    outs = [out]
    for t in range(4, 10):
        out, state = layer(x[:, t : t + 1], causal=True, state=state, return_state=True)
        outs.append(out)
    assert state.length == 10
    torch.testing.assert_close(torch.cat(outs, 1), whole)


def test_cross_attention_cache_reuses_context():
    layer = Attention(16, 2).double()
    x, mem = torch.randn(1, 4, 16, dtype=torch.float64), torch.randn(1, 7, 16, dtype=torch.float64)
    first, cache = layer(x[:, :1], mem, return_state=True)
    second, cache = layer(x[:, 1:], state=cache, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), layer(x, mem))


def test_gradients_reach_every_parameter_and_masks_apply():
    layer = Attention(16, 2, qk_norm=True, bias=True)
    x = torch.randn(2, 5, 16, requires_grad=True)
    pad = torch.tensor([[True] * 5, [True, True, True, False, False]])
    y = layer(x, mask=pad)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())
    torch.testing.assert_close(layer(x[1:, :3]), y[1:, :3])  # padded keys are ignored


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="heads"):
        Attention(30, 4)
    with pytest.raises(ValueError, match="kv_heads"):
        Attention(32, 4, kv_heads=3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Attention(32, 4, no_such_param=1)
    with pytest.raises(ValueError, match="unknown mechanism"):
        Attention(32, 4, mechanism="nope")
    with pytest.raises(TypeError, match="rope"):
        Attention(32, 4, rope="yes")
    layer = Attention(32, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, 32\)"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="context"):
        layer(torch.randn(2, 5, 32), torch.randn(3, 5, 32))
    with pytest.raises(ValueError, match="causal=True"):
        layer(torch.randn(1, 3, 32), return_state=True)


def _gated_spec():
    """A toy mechanism with a per-token tensor input ``gate`` (B, H, N, 1): softmax attention * sigmoid(gate)."""
    from attnkit.reference import materialised_attention
    from attnkit.registry import ALL_PATTERNS, MechanismSpec
    from attnkit.builders.kv_cache_step import kv_cache_step

    def form(q, k, v, *, causal, mask, scale, gate):
        return materialised_attention(q, k, v, causal=causal, mask=mask, scale=scale) * torch.sigmoid(gate)

    def step(q, k, v, state, *, causal, mask, scale, gate):
        return kv_cache_step(lambda *a, **kw: form(*a, **kw, gate=gate))(q, k, v, state, causal=causal, mask=mask, scale=scale)

    class GateFromTokens(torch.nn.Module):
        def __init__(self, dim, heads, kv_heads, head_dim):
            super().__init__()
            self.proj = torch.nn.Linear(dim, heads)

        def forward(self, x, q, k, v):
            return {"gate": self.proj(x).transpose(1, 2)[..., None]}

    return MechanismSpec(
        name="toy_gated", family="test", papers=(), patterns=ALL_PATTERNS, reference=form, fast={"ref": form},
        step=step, tensor_inputs=lambda q, k, v, g: {"gate": torch.randn(*q.shape[:3], 1, generator=g, dtype=q.dtype)},
        tensor_inputs_per_token=("gate",),
    ), GateFromTokens


def test_layer_learns_tensor_inputs_through_the_registered_input_module(monkeypatch):
    from attnkit import registry
    from attnkit.nn import inputs

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(inputs, "_FACTORIES", dict(inputs._FACTORIES))
    spec, module = _gated_spec()
    registry.register(spec)
    inputs.register_input_module("toy_gated", module)
    layer = Attention(16, 2, mechanism="toy_gated").double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    whole = layer(x, causal=True)
    out, state = layer(x[:, :2], causal=True, return_state=True)
    out2, _ = layer(x[:, 2:], causal=True, state=state, return_state=True)
    torch.testing.assert_close(torch.cat([out, out2], 1), whole)
    whole.sum().backward()
    assert layer.inputs.proj.weight.grad is not None
    with pytest.raises(TypeError, match="made by the layer"):
        Attention(16, 2, mechanism="toy_gated", gate=torch.zeros(1))


def test_layer_refuses_tensor_inputs_it_cannot_learn(monkeypatch):
    from attnkit import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(_gated_spec()[0])
    with pytest.raises(ValueError, match="has no input module"):
        Attention(16, 2, mechanism="toy_gated")
