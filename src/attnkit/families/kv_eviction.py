"""KV-cache eviction by score: H2O, TOVA, key norm (the rule is in :mod:`attnkit.kernels.eviction`).

- ``h2o``: Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative
  Inference of Large Language Models" (2023). The cache keeps the ``recent``
  newest tokens and the ``heavy`` "heavy hitters" with the largest attention
  accumulated since they entered; one token is evicted per decoded token
  (the paper's greedy Algorithm 1 with its recent window).
- ``tova``: Oren et al., "Transformers are Multi-State RNNs" (2024): Token
  Omission Via Attention keeps at most ``budget`` tokens and drops the one
  with the lowest attention weight from the current query, averaged over the
  heads of the layer (so all heads keep the same tokens).
- ``knorm``: Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for
  KV Cache Compression" (2024): keys with a low L2 norm draw high attention,
  so a cache of ``budget`` tokens evicts the one with the largest key norm (no
  attention scores needed). The authors leave the first two layers
  uncompressed; that is a model-level choice, not part of this mechanism.

All three are causal self-attention only (decode-time cache policies) and take no
mask. ``start`` = number of leading queries that see every previous token
(a prompt prefilled with full attention: the policy compresses the cache
after it and evicts during decoding); 0 = the policy from the first token.
The reference materialises the rule as a mask; the ``cache`` form is the
bounded cache, and incremental calls carry it (:class:`EvictionCache`).
"""
from __future__ import annotations

from ..params import Param
from ..kernels.eviction import check_budget, eviction_mask, eviction_step
from ..reference import materialised_attention, materialised_weights
from ..registry import MechanismSpec, register

CAUSAL_SELF = frozenset({"causal-self"})


def _seen(n: int, budget: int, start: int) -> int:
    """Pairs attended by n queries: full rows before ``start``, at most ``budget + 1`` keys after."""
    return sum(i + 1 if i < start else min(i + 1, budget + 1) for i in range(n))


def _register(name, papers, summary, params, test_params, rule):
    """``rule(**params) -> (heavy, recent, start, score_by, head_mean)``."""

    def settings(params):
        heavy, recent, start, score_by, head_mean = rule(**params)
        check_budget(heavy, recent, start)
        return dict(heavy=heavy, recent=recent, start=start, score_by=score_by, head_mean=head_mean)

    def reference(q, k, v, *, causal, mask, scale, **params):
        seen = eviction_mask(q, k, scale=scale, **settings(params))
        return materialised_attention(q, k, v, causal=False, mask=seen, scale=scale)

    def weights(q, k, v, *, causal, mask, scale, **params):
        """Softmax weights over the keys the cache holds when each query reads it (zeros: evicted)."""
        seen = eviction_mask(q, k, scale=scale, **settings(params))
        return materialised_weights(q, k, causal=False, mask=seen, scale=scale)

    def cache(q, k, v, *, causal, mask, scale, **params):
        return eviction_step(q, k, v, None, scale=scale, **settings(params))[0]

    def step(q, k, v, state, *, causal, mask, scale, **params):
        return eviction_step(q, k, v, state, scale=scale, **settings(params))

    defaults = {n: p.default for n, p in params.items()}

    def budget(overrides):
        """(heavy, recent, start) of the call's parameters over the defaults."""
        return rule(**{**defaults, **{n: x for n, x in overrides.items() if n in params}})[:3]

    def flops(batch, heads, q_len, kv_len, head_dim, causal, **overrides):
        heavy, recent, start = budget(overrides)
        return 4 * batch * heads * head_dim * _seen(q_len, heavy + recent, start)

    def state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **overrides):
        heavy, recent, start = budget(overrides)
        kept = seq_len if seq_len < start else min(seq_len, heavy + recent)
        return batch * heads * (head_dim + (v_dim or head_dim)) * kept

    reference.__name__, cache.__name__ = f"{name}_reference", f"{name}_cache"
    register(MechanismSpec(
        name=name, family="kv_cache", papers=papers, patterns=CAUSAL_SELF, reference=reference,
        fast={"cache": cache}, step=step, params=params, supports_mask=False, flops=flops,
        state_size=state_size, complexity="O(N budget)", summary=summary, test_params=test_params,
        weights=weights, extra={"kept": lambda q, k, *, scale, **params: eviction_mask(q, k, scale=scale,
                                                                                     **settings(params))},
    ))


_register(
    "h2o",
    ("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",),
    "KV cache of the `recent` newest tokens + the `heavy` with the most accumulated attention",
    params={"heavy": Param(64, int, 'heavy-hitter tokens kept', low=0), "recent": Param(64, int, 'most recent tokens kept', low=0),
            "start": Param(0, int, 'tokens kept whole before eviction starts', low=0)},
    test_params={"heavy": 4, "recent": 3, "start": 10},
    rule=lambda heavy, recent, start: (heavy, recent, start, "accumulated", False),
)

_register(
    "tova",
    ("Transformers are Multi-State RNNs",),
    "KV cache of `budget` tokens; drops the lowest head-averaged attention of the current query",
    params={"budget": Param(128, int, 'tokens kept', low=1), "start": Param(0, int, 'tokens kept whole before eviction starts', low=0)},
    test_params={"budget": 6, "start": 0},
    rule=lambda budget, start: (budget, 0, start, "current", True),
)

_register(
    "knorm",
    ("A Simple and Effective L_2 Norm-Based Strategy for KV Cache Compression",),
    "KV cache of `budget` tokens; evicts the key with the largest L2 norm",
    params={"budget": Param(128, int, 'tokens kept', low=1), "start": Param(0, int, 'tokens kept whole before eviction starts', low=0)},
    test_params={"budget": 5, "start": 12},
    rule=lambda budget, start: (budget, 0, start, "key_norm", False),
)
