"""Aaren: attention as a many-to-many RNN over the state (m, u, w), computed by a prefix scan.

Feng, Tung, Hajimirsadeghi, Bengio & Ahmed, "Attention as an RNN" (2024). With a
query token that does not change along the sequence, the attention outputs of
every prefix,

    o_t = sum_{i<=t} exp(s_i) v_i / sum_{i<=t} exp(s_i),    s_i = q . k_i ,

are an RNN over ``(m, u, w)`` = (running max of the scores, ``sum exp(s_i - m)``,
``sum exp(s_i - m) v_i``) whose combine is associative::

    (m_a, u_a, w_a) + (m_b, u_b, w_b) = (m, u_a e^(m_a - m) + u_b e^(m_b - m), w_a e^(m_a - m) + w_b e^(m_b - m)),
    m = max(m_a, m_b),   o = w / u,

so a parallel prefix scan computes all outputs and decoding keeps ``2 + Dv``
numbers per head.

**How the query enters** ``attention(q, k, v, "aaren")``: Aaren's query is a learned
token per head, not a per-position input. attnkit reads it from ``q`` and scores
token ``i`` with the query at its own position, ``s_i = scale q_i . k_i``;
:class:`attnkit.nn.aaren.AarenLayer` passes its learned query broadcast along
the sequence (``q_i = q`` for every ``i``), which is exactly the paper's
mechanism. A ``q`` that varies along the sequence still runs the same RNN (each
token's score comes from that token alone); it is not softmax attention with
per-query rows (that needs a KV cache). Causal self-attention only: the paper's
many-to-many RNN. ``scale`` defaults to ``1/sqrt(head_dim)``; pass ``scale=1.0``
for the paper's ``s_i = q . k_i``.

Stateful forms ``f(q, k, v, *, causal, scale, initial_state=None, chunk_size=64)
-> (out, RecurrentState(m, u, w))``: ``parallel`` (the materialised ``(N, N)``
prefix softmax, the reference), ``chunked`` (materialised inside chunks, the
state across them), ``scan`` (Hillis-Steele log-depth scan of the combine) and
``recurrent`` (token by token).
"""
from __future__ import annotations

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...params import Param
from .forms import FORMS, PAPER, prefix_weights


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    """Chunked form at the default chunk (64): per token a score, and a 64-wide masked row times V."""
    return 2 * batch * heads * q_len * (head_dim + 64 * (head_dim + 2))


register_stateful_mechanism(
    "aaren",
    weights=prefix_weights,
    forms=FORMS,
    family="recurrent-attention",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1)},
    flops=_flops,
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params: (
        batch * heads * ((v_dim or head_dim) + 2)),  # m, u and w (Dv)
    complexity="O(N)",
    summary="prefix softmax of a learned query over every prefix as an RNN over (max, sum, weighted sum)",
    test_params={"chunk_size": 16},
)
