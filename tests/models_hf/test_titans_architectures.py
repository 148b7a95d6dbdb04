"""Titans' MAC, MAG and MAL against float64 references written from the paper's equations;
incremental calls equal one call; configuration errors name the option."""
import copy

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.models import DecoderLM, ModelConfig
from attnkit.models.titans import MemoryAsContext, MemoryAsGate, MemoryAsLayer

from .lm_checks import assert_generate_equals_recompute

DIM, HEADS, HD = 24, 2, 12
MEMORY_PARALLEL = attnkit.spec("titans").stateful_forms["parallel"]


def heads(t, n):
    return t.unflatten(-1, (n, -1)).transpose(1, 2)


def merge(t):
    return t.transpose(1, 2).flatten(2)


def memory_layer(mem, x, state=None):
    """``M(x)`` of a titans layer: the mechanism's parallel (token-by-token) form; returns output and state."""
    q, k, v = (heads(p(x), HEADS) for p in (mem.q_proj, mem.k_proj, mem.v_proj))
    if mem.rope is not None:
        pos = torch.arange(x.shape[1])
        q, k = mem.rope.rotate(q, pos), mem.rope.rotate(k, pos)
    out, state = MEMORY_PARALLEL(q, k, v, causal=True, scale=HD**-0.5, initial_state=state,
                                 **mem.mechanism_params, **mem.inputs(x, q, k, v))
    return mem.out_proj(merge(out)), state


def softmax_attention(attn_q, k, v, allowed):
    scores = (attn_q @ k.transpose(-1, -2)) * HD**-0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


def window_layer(attn, x, sinks, window):
    """Sliding-window attention in which the first ``sinks`` tokens stay visible, with RoPE."""
    q, k, v = (heads(p(x), HEADS) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    pos = torch.arange(x.shape[1])
    q, k = attn.rope.rotate(q, pos), attn.rope.rotate(k, pos)
    i, j = pos[:, None], pos[None, :]
    allowed = (j <= i) & ((j < sinks) | (i - j <= window))
    return attn.out_proj(merge(softmax_attention(q, k, v, allowed)))


def with_persistent(mod, x):
    return torch.cat([mod.persistent.expand(x.shape[0], -1, -1), x], dim=1)


def mag_reference(mod, x):
    """x~ = [P || x], y = SW-Attn*(x~), o = norm(y) * sigmoid(norm(M(x~)))."""
    xt = with_persistent(mod, x)
    n_p = mod.persistent.shape[0]
    y = window_layer(mod.attn, xt, n_p, mod.attn.mechanism_params["window"])
    m, _ = memory_layer(mod.memory, xt)
    return (mod.attn_norm(y) * torch.sigmoid(mod.memory_norm(m)))[:, n_p:]


def mal_reference(mod, x):
    """x~ = [P || x], y = M(x~), o = SW-Attn(norm(y))."""
    xt = with_persistent(mod, x)
    n_p = mod.persistent.shape[0]
    y, _ = memory_layer(mod.memory, xt)
    return window_layer(mod.attn, mod.norm(y), n_p, mod.attn.mechanism_params["window"])[:, n_p:]


def mac_reference(mod, x):
    """Per segment S: h = M*_{t-1}(S W_Q); y = Attn([P || h || S]); M_t = M_{t-1}(y); o = norm(y) * sigmoid(norm(M*_t(y)))."""
    mem, C, n_p = mod.memory, mod.segment, mod.persistent.shape[0]
    W1, W2, state, outs = mem.inputs.w1, mem.inputs.w2, None, []
    for t in range(0, x.shape[1], C):
        S = x[:, t:t + C]
        c = S.shape[1]
        q = F.normalize(heads(mem.q_proj(S), HEADS), dim=-1) * HD**-0.5
        h = mem.out_proj(merge(F.silu(q @ W1) @ W2))
        context = torch.cat([mod.persistent.expand(x.shape[0], -1, -1), h, S], dim=1)
        i, j = torch.arange(c)[:, None], torch.arange(n_p + 2 * c)[None, :]
        allowed = (j < n_p) | ((j < n_p + c) & (j - n_p <= i)) | ((j >= n_p + c) & (j - n_p - c <= i))
        y = mod.out_proj(merge(softmax_attention(heads(mod.q_proj(S), HEADS), heads(mod.k_proj(context), HEADS),
                                                 heads(mod.v_proj(context), HEADS), allowed)))
        m, state = memory_layer(mem, y, state)
        W1, W2 = state["W1"], state["W2"]
        outs.append(mod.attn_norm(y) * torch.sigmoid(mod.memory_norm(m)))
    return torch.cat(outs, dim=1)


CASES = {
    "mac": (lambda: MemoryAsContext(DIM, HEADS, None, HD, segment=5, persistent=3), mac_reference),
    "mag": (lambda: MemoryAsGate(DIM, HEADS, None, HD, window=4, persistent=2, chunk_size=3), mag_reference),
    "mal": (lambda: MemoryAsLayer(DIM, HEADS, None, HD, window=4, persistent=2, chunk_size=3), mal_reference),
}


@pytest.mark.parametrize("kind", CASES)
def test_architecture_matches_its_equations(kind):
    """float64: module = reference; float32 (forward and the input's gradient): the module's error against
    the float64 reference is within 10x the float32 reference's own (the conformance suite's rule: the
    memory's small early read-outs meet RMSNorm's dtype-dependent eps, so float32 itself is off there)."""
    torch.manual_seed(0)
    make, reference = CASES[kind]
    mod = make().double()
    x = torch.randn(2, 13, DIM, dtype=torch.float64)
    with torch.no_grad():
        assert (mod(x, causal=True) - reference(mod, x)).abs().max() < 1e-10
    mod32 = copy.deepcopy(mod).float()

    def run(f, m, dtype):
        xi = x.to(dtype).clone().requires_grad_()
        out = f(m, xi)
        out.square().sum().backward()
        return out.detach().double(), xi.grad.double()

    exact = run(reference, mod, torch.float64)
    fast = run(lambda m, xi: m(xi, causal=True), mod32, torch.float32)
    ref32 = run(reference, mod32, torch.float32)
    for got, want, own in zip(fast, exact, ref32):
        assert (got - want).abs().max() <= 10 * (own - want).abs().max() + 1e-6


@pytest.mark.parametrize("kind", CASES)
def test_incremental_calls_equal_one_call_and_states_are_values(kind):
    torch.manual_seed(1)
    mod = CASES[kind][0]().eval()
    x = torch.randn(1, 17, DIM)
    with torch.no_grad():
        full = mod(x, causal=True)
        pieces, state = [], None
        for a, b in ((0, 1), (1, 7), (7, 8), (8, 17)):
            out, new = mod(x[:, a:b], causal=True, state=state, return_state=True)
            if a == 7:
                again, _ = mod(x[:, a:b], causal=True, state=state, return_state=True)
                assert torch.equal(out, again)
            pieces.append(out)
            state = new
    assert state.length == 17 + (0 if kind == "mac" else mod.persistent.shape[0])
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("kind", CASES)
def test_lm_generation_with_states_equals_recompute(kind):
    torch.manual_seed(2)
    options = {"segment": 4} if kind == "mac" else {"window": 5, "chunk_size": 4}
    lm = DecoderLM(ModelConfig(vocab_size=30, dim=DIM, heads=HEADS, schedule="TF",
                               mixers={"T": {"titans": kind, **options}, "F": "softmax"})).eval()
    prompt = torch.randint(0, 30, (2, 6))
    assert_generate_equals_recompute(lm, prompt, 5)


def test_errors_name_the_option():
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(schedule="T", mixers={"T": {"titans": "mxx"}})
    with pytest.raises(ValueError, match="segment"):
        ModelConfig(schedule="T", mixers={"T": {"titans": "mag", "segment": 4}})
    with pytest.raises(ValueError, match="window"):
        ModelConfig(schedule="T", mixers={"T": {"titans": "mal", "window": 0}})
    with pytest.raises(ValueError, match="context_parallel"):
        ModelConfig(schedule="T", mixers={"T": {"titans": "mac"}}, context_parallel="ring")
    with pytest.raises(ValueError, match="causal"):
        MemoryAsGate(DIM, HEADS, None, HD, window=4, persistent=2, chunk_size=3)(torch.randn(1, 3, DIM))
    with pytest.raises(ValueError, match="non-causal"):
        from attnkit.models import Encoder
        Encoder(ModelConfig(schedule="T", mixers={"T": {"titans": "mag"}}))
