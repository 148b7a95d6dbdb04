"""Agent attention: a few agent tokens gather from the keys and broadcast to the queries.

Han et al., "Agent Attention: On the Integration of Softmax and Linear
Attention" (2024). Agent tokens ``A`` (``n << N``, pooled from the queries)
first attend to the keys, then the queries attend to the agents:

    V_A = softmax(A K^T * scale) V,   O = softmax(Q A^T * scale) V_A

a generalised linear attention of cost O(N n d). The agents are the adaptive
average pools of Q over the sequence (``agents`` of them; the paper pools a 2-D
grid). The reference materialises the ``(Nq, Nk)`` product of the two softmax
matrices. Pooling over all queries makes it non-causal. The paper's block (2-D
pooled agents, agent biases, depthwise convolution on V) is
``attnkit.nn.AgentAttention``.
"""
from __future__ import annotations

import torch.nn.functional as F

from ..params import Param
from ..kernels.positions import repeat_kv
from ..registry import MechanismSpec, register
from ..validation import check_int

PAPER = "Agent Attention: On the Integration of Softmax and Linear Attention"


def agent_tokens(q, agents: int):
    check_int("agents", agents)
    B, H, N, D = q.shape
    pooled = F.adaptive_avg_pool1d(q.reshape(B * H, N, D).transpose(1, 2), agents)
    return pooled.transpose(1, 2).reshape(B, H, agents, D)


def _weights(q, k, v, scale, agents):
    H = q.shape[1]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    a = agent_tokens(q, agents)
    gather = (a @ k.transpose(-1, -2) * scale).softmax(dim=-1)  # (n, Nk)
    broadcast = (q @ a.transpose(-1, -2) * scale).softmax(dim=-1)  # (Nq, n)
    return broadcast, gather, v


def agent_weights(q, k, v, *, causal, mask, scale, agents):
    """The implicit attention matrix ``softmax(Q A^T) softmax(A K^T)`` (rows sum to one)."""
    broadcast, gather, _ = _weights(q, k, v, scale, agents)
    return broadcast @ gather


def agent_reference(q, k, v, *, causal, mask, scale, agents):
    return agent_weights(q, k, v, causal=causal, mask=mask, scale=scale, agents=agents) @ repeat_kv(v, q.shape[1])


def agent_fast(q, k, v, *, causal, mask, scale, agents):
    broadcast, gather, v = _weights(q, k, v, scale, agents)
    return broadcast @ (gather @ v)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, agents=49):
    return 4 * batch * heads * agents * (q_len + kv_len) * head_dim


register(
    MechanismSpec(
        name="agent",
        family="linear",
        papers=(PAPER,),
        patterns=frozenset({"noncausal-self", "noncausal-cross"}),
        reference=agent_reference,
        weights=agent_weights,
        fast={"two_step": agent_fast},
        params={"agents": Param(49, int, "agent tokens pooled from the queries (the paper uses 49)", low=1)},
        supports_mask=False,
        flops=_flops,
        complexity="O(N n)",
        summary="agent tokens pooled from Q: softmax(Q A^T) (softmax(A K^T) V)",
        test_params={"agents": 5},
    )
)
