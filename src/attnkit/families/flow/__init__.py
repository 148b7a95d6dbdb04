"""Flow-Attention (Flowformer), causal: linear attention with conserved flows.

Wu, Wu, Xu, Wang & Long, "Flowformer: Linearizing Transformers with Conservation
Flows" (ICML 2022). Attention is a flow network from sources (keys, values) to
sinks (queries), with ``phi = sigmoid`` as the non-negative map. Conserving each
sink's incoming flow and each source's outgoing flow gives competition among the
sources and an allocation of each sink's result, with no locality bias and O(N)
work. The causal version of the authors' code, at position ``i`` (counted from 1
over every token so far, as the normaliser ``n_i = i`` of their code), with
``eps`` added to every element of both sides of each dot product::

    I_i = i / (q_i . sum_{j<=i} k_j)            incoming flow of sink i (scaled by i)
    O_i = i / (k_i . sum_{j<=i} q_j)            outgoing flow of source i
    c_sink_i = q_i . sum_{j<=i} k_j O_j / i      conserved incoming flow
    c_src_i  = clamp(k_i . sum_{j<=i} q_j I_j / i, -1, 1)   conserved outgoing flow
    comp_i   = i exp(c_src_i) / sum_{j<=i} exp(c_src_j)      source competition
    alloc_i  = sigmoid(c_sink_i)                              sink allocation
    out_i    = alloc_i (q_i I_i / i) sum_{j<=i} k_j^T (v_j comp_j)

with ``q = sigmoid(scale q)``, ``k = sigmoid(k)`` (``scale=1.0`` is the paper's
form). Every sum runs over the prefix, so the mechanism is an RNN whose state is
``sum k, sum q, sum k O, sum q I`` (``Dk`` each), ``sum exp(c_src)`` and
``S = sum k^T (v comp)``. Forms (``f(q, k, v, *, causal, scale, initial_state=None,
eps, chunk_size) -> (out, RecurrentState)``): ``parallel`` (prefix sums as
products with the ``(N, N)`` lower-triangular matrix: the reference), ``chunked``
(running sums, then the chunked linear scan) and ``recurrent`` (token by token).
The paper's non-causal version (every sum over the whole sequence, competition a
softmax over all sources) has no constant-size state: it is ``flow_bidirectional``.
"""
from __future__ import annotations

from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...params import Param
from .forms import FORMS, PAPER, flow_weights


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    """Chunked form (chunk 64): the linear scan's matmuls plus ~12 passes over q and k for the flows."""
    c = 64
    return 2 * batch * heads * q_len * (c * head_dim + c * head_dim + 2 * head_dim * head_dim + 6 * head_dim)


register_stateful_mechanism(
    "flow",
    weights=flow_weights,
    forms=FORMS,
    family="linear",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"eps": Param(1e-6, float, "added to every flow dot product (Flowformer uses 1e-6)", low=0),
            "chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1)},
    flops=_flops,
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params: (
        batch * heads * (4 * head_dim + 1 + head_dim * (v_dim or head_dim))),
    complexity="O(N)",
    summary="Flowformer's causal Flow-Attention: sigmoid maps, conserved incoming/outgoing flows, "
            "source competition and sink allocation; O(N), constant-size state",
    test_params={"chunk_size": 16},
)
