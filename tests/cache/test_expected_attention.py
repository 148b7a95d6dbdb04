"""Expected Attention: the future queries' statistics and the closed-form expected attention."""
import pytest
import torch

import attnkit
from attnkit.cache import ExpectedAttention, KVState
from attnkit.positional import RoPE

D = 8


def gaussian_queries(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    A = torch.randn(D, D, generator=g, dtype=torch.float64) / 3
    q_pre = mu + torch.randn(1, 1, n, D, generator=g, dtype=torch.float64) @ A.T
    return mu, A @ A.T, q_pre


def test_statistics_undo_rope_and_rotate_to_the_future_position():
    rope = RoPE(D)
    mu, sigma, q_pre = gaussian_queries()
    positions = torch.arange(q_pre.shape[2])
    q = rope.rotate(q_pre, positions)
    policy = ExpectedAttention(0.5, rotate=rope.rotate, future=1, sinks=0)
    mu_f, sigma_f = policy.statistics(q, positions, length=q.shape[2])
    R = rope.rotate(torch.eye(D, dtype=torch.float64)[:, None], torch.tensor([q.shape[2]]))[:, 0].T
    torch.testing.assert_close(mu_f[0, 0], R @ q_pre[0, 0].mean(0))
    torch.testing.assert_close(sigma_f[0, 0], R @ torch.cov(q_pre[0, 0].T, correction=0) @ R.T)


def test_scores_are_the_expected_attention_of_gaussian_queries_times_value_norms():
    rope = RoPE(D)
    _, _, q_pre = gaussian_queries(n=64)
    q = rope.rotate(q_pre, torch.arange(64))
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(1, 1, 64, D, generator=g, dtype=torch.float64), torch.randn(1, 1, 64, D, generator=g, dtype=torch.float64)
    policy = ExpectedAttention(16, rotate=rope.rotate, future=4, sinks=2)
    _, state = attnkit.attention(q, k, v, "softmax", causal=True, state=KVState(policy), return_state=True)
    mu_f, sigma_f = policy.statistics(q, torch.arange(64), 64)
    torch.manual_seed(0)
    samples = torch.distributions.MultivariateNormal(mu_f[0, 0], sigma_f[0, 0]).sample((200000,))
    expected = torch.exp(samples @ k[0, 0].T / D**0.5).mean(0)
    score = expected / expected.sum() * v[0, 0].norm(dim=-1)
    kept = score[2:].topk(14).indices.sort().values + 2
    assert state.store.pos[0, 0].tolist() == [0, 1] + kept.tolist()


def test_hf_rotation_is_the_models_rope():
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from attnkit.cache.hf import rotation

    from .helpers import tiny_llama

    model = tiny_llama()
    x = torch.randn(1, 4, 10, 16)
    positions = torch.arange(5, 15)
    cos, sin = model.model.rotary_emb(x, positions[None])
    torch.testing.assert_close(rotation(model)(x, positions), apply_rotary_pos_emb(x, x, cos, sin)[0])


def test_expected_attention_in_generate_keeps_its_budget():
    pytest.importorskip("transformers")
    from attnkit.cache.hf import rotation

    from .helpers import prompt, tiny_llama

    model = tiny_llama()
    cache = attnkit.cache.Cache(ExpectedAttention(20, rotate=rotation(model), future=16), model=model)
    model.generate(prompt(), max_new_tokens=4, do_sample=False, cache=cache)
    assert [layer.store.used for layer in cache.layers] == [23, 23]  # 20 kept + 3 decoded (prefill only)
    cache.close()
