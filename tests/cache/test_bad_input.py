"""Bad budgets, mechanisms and policies get a clear error before any work."""
import pytest
import torch

import attnkit
from attnkit.cache import H2O, KeyNorm, KVState, PyramidKV, SnapKV, StreamingLLM

from .helpers import qkv


@pytest.mark.parametrize("budget, error", [(0, ValueError), (-3, ValueError), (0.0, ValueError), (1.5, ValueError),
                                           (True, TypeError), ("half", TypeError)])
def test_budgets_must_be_positive_tokens_or_a_fraction(budget, error):
    with pytest.raises(error, match="budget"):
        KeyNorm(budget)


def test_a_budget_larger_than_the_prompt_is_refused():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="at most the context"):
        attnkit.attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], "softmax", causal=True, state=KVState(KeyNorm(9)))


@pytest.mark.parametrize("mechanism", ["linear", "sigmoid"])
def test_a_cache_state_with_a_mechanism_that_is_not_softmax_is_refused(mechanism):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="attention weights"):
        attnkit.attention(q, k, v, mechanism, causal=True, state=KVState(H2O(8)))


def test_policy_parameters_are_checked():
    with pytest.raises(ValueError, match="when"):
        KeyNorm(8, when="sometimes")
    with pytest.raises(ValueError, match="kernel"):
        SnapKV(8, kernel=4)
    with pytest.raises(ValueError, match="layers"):
        PyramidKV(SnapKV(8), layers=0)
    with pytest.raises(TypeError, match="policy"):
        KVState("h2o")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="sinks"):
        attnkit.attention(q, k, v, "softmax", causal=True, state=KVState(StreamingLLM(4, sinks=4)))


def test_a_state_continued_with_other_shapes_is_refused():
    q, k, v = qkv()
    _, state = attnkit.attention(q, k, v, "softmax", causal=True, state=KVState(), return_state=True)
    with pytest.raises(ValueError, match="belongs to one model"):
        attnkit.attention(q[:, :2, :1], k[:, :1, :1], v[:, :1, :1], "softmax", causal=True, state=state)
    with pytest.raises(ValueError, match="belongs to one model"):
        attnkit.attention(q[:, :, :1].float(), k[:, :, :1].float(), v[:, :, :1].float(), "softmax", causal=True, state=state)


def test_head_wise_and_chunked_caches_refuse_what_they_cannot_do():
    from attnkit.cache import AdaKV, Cache, RazorAttention

    q, k, v = qkv()
    _, state = attnkit.attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], "softmax", causal=True,
                                 state=KVState(AdaKV(SnapKV(10, window=4))), return_state=True)
    with pytest.raises(ValueError, match="belongs to one model"):  # a ragged layer continued by another model
        attnkit.attention(q[:, :2, 20:21], k[:, :1, 20:21], v[:, :1, 20:21], "softmax", causal=True, state=state)
    with pytest.raises(ValueError, match="at most the context"):  # a budget above the declared prompt
        attnkit.attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], "softmax", causal=True,
                          state=KVState(KeyNorm(12), prompt=10))
    with pytest.raises(ValueError, match="prompt"):
        KVState(KeyNorm(4), prompt=0)
    with pytest.raises(ValueError, match="prompt"):
        Cache(KeyNorm(4), prompt=-1)
    with pytest.raises(ValueError, match="model="):  # ragged rows need the cache's own attention in generate
        Cache(RazorAttention(8, retrieval=torch.ones(1, 2, dtype=torch.bool)))
