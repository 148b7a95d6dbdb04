"""Vertical-slash sparse prefill (Jiang et al., "MInference 1.0: Accelerating Pre-filling for Long-Context
LLMs via Dynamic Sparse Attention", 2024).

Many heads of a long-context LLM attend along a few *vertical* lines (keys
every query reads: sinks, separators) and a few *slash* lines (keys at a fixed
distance ``i - j`` from the query: the local window and periodic patterns).
Per head, the last ``last_q`` queries estimate both from their attention::

    A = softmax(Q[-last_q:] K^T / sqrt(d) + causal)                 (last_q x N)
    a_v(j) = sum_t A(t, j)                 vertical score of key j
    a_s(o) = sum_t A(t, p_t - o)           slash score of offset o  (p_t = position of query t)
    V = Topk(a_v, vertical),  S = Topk(a_s, slash)

and every query ``i`` attends exactly the keys ``{j <= i : j in V or i - j in S}``.

Conventions (checked against MInference's ``vertical_and_slash_kernel``): the
first ``sinks`` keys are always vertical (the authors force 30) and the
offsets ``0 .. local - 1`` always slash (the authors force 100), both counted
in ``vertical`` / ``slash``; ties go to the earlier key / smaller offset; one
choice per query head (GQA heads choose alone); the estimate runs in the input
dtype.

How it runs on blocks: the lines are not block-aligned, so the fast form
(``lines``, :mod:`attnkit.kernels.line_attention`) attends **exactly the kept
positions**: the vertical keys gathered once, the slash lines covered by the
``block``-aligned key tiles they cross and masked element by element inside
them, one softmax over both. MInference's GPU kernel computes whole 64-wide
bands around each slash instead (it attends a superset); the answer here is
attention over exactly ``V`` and ``S``. The method is for inference (gradients
flow through the gathers, autograd keeping the covered scores).
"""
from __future__ import annotations

import torch

from ..builders.estimated_sparse import last_queries_lines
from ..kernels.line_attention import line_attention, line_density, line_rows
from ..kernels.positions import repeat_kv
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register

PAPER = "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse Attention"


def _top(scores, forced_count, count):
    """Indices of the ``count`` best entries, the first ``forced_count`` always among them (stable ties)."""
    n = scores.shape[-1]
    forced = torch.arange(n, device=scores.device) < forced_count
    order = scores.masked_fill(forced, float("inf")).sort(dim=-1, descending=True, stable=True).indices
    return order[..., : min(count, n)]


def lines(q, k, *, scale, last_q, vertical, slash, sinks, local):
    """The kept lines: vertical keys ``(B, H, nv)`` and slash offsets ``(B, H, ns)``."""
    columns, slashes, _ = last_queries_lines(q, k, scale, last_q)
    return _top(columns, sinks, vertical), _top(slashes, local, slash)


def vertical_slash_lines(q, k, v, *, causal, mask, scale, last_q, vertical, slash, sinks, local, block):
    V, S = lines(q.detach(), k.detach(), scale=scale, last_q=last_q, vertical=vertical, slash=slash,
                 sinks=sinks, local=local)
    return line_attention(q, k, v, V, S, scale=scale, block=block)


def reference_mask(q, k, *, scale, last_q, vertical, slash, sinks, local):
    """The kept (query, key) pairs ``(B, H, N, N)`` from the equations, in float64 with plain loops."""
    B, H, N, _ = q.shape
    s = (q.double() @ repeat_kv(k, H).double().transpose(-1, -2)) * scale
    n = min(last_q, N)
    i = torch.arange(N, device=q.device)
    allowed = i[None, :] <= i[:, None]
    A = torch.softmax(s[:, :, -n:].masked_fill(~allowed[-n:], float("-inf")), -1)
    keep = torch.zeros(B, H, N, N, dtype=torch.bool, device=q.device)
    for b in range(B):
        for h in range(H):
            a_v = A[b, h].sum(0).tolist()
            a_s = [sum(float(A[b, h, t, N - n + t - o]) for t in range(n) if N - n + t - o >= 0) for o in range(N)]
            V = sorted(range(N), key=lambda j: (j >= sinks, -a_v[j], j))[:vertical]
            S = sorted(range(N), key=lambda o: (o >= local, -a_s[o], o))[:slash]
            keep[b, h][:, V] = True
            for o in S:
                keep[b, h] |= i[:, None] - i[None, :] == o
    return keep & allowed


def _reference(q, k, v, *, causal, mask, scale, last_q, vertical, slash, sinks, local, block):
    kept = reference_mask(q.detach(), k.detach(), scale=scale, last_q=last_q, vertical=vertical, slash=slash,
                          sinks=sinks, local=local)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def attended(q, k, rows, *, scale, last_q, vertical, slash, sinks, local, block):
    """The keys query rows ``rows`` attend ``(B, H, len(rows), N)`` and the density of the whole call."""
    V, S = lines(q, k, scale=scale, last_q=last_q, vertical=vertical, slash=slash, sinks=sinks, local=local)
    return line_rows(V, S, rows, k.shape[2]), line_density(V, S, k.shape[2])


register(MechanismSpec(
    name="vertical_slash",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"lines": vertical_slash_lines},
    step=None,
    params={"last_q": Param(64, int, "queries at the end of the prompt that estimate the lines", low=1),
            "vertical": Param(1000, int, "vertical lines (keys) kept per head, the sinks included", low=1),
            "slash": Param(6096, int, "slash lines (offsets) kept per head, the local ones included", low=1),
            "sinks": Param(30, int, "first keys always vertical", low=0),
            "local": Param(100, int, "offsets 0..local-1 always slash (the local window)", low=1),
            "block": Param(64, int, "queries per chunk and tokens per covering key tile", low=1)},
    test_params={"last_q": 8, "vertical": 6, "slash": 6, "sinks": 2, "local": 3, "block": 16},
    supports_mask=False,
    complexity="O(N (vertical + covered slash tiles) d)",
    summary="prefill: exact attention on the top vertical keys and slash offsets estimated from the last queries",
    selection_reads_whole_prompt=True, extra={"attended": attended},
))
