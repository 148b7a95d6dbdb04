"""LASP-2: linear, decayed and gated attention over a sequence split across ranks, one all-gather of states.

Sun et al., "LASP-2: Rethinking Sequence Parallelism for Linear Attention and
Its Hybrid". Every linear-family mechanism of attnkit is one recurrence over a
matrix state (:mod:`attnkit.kernels.linear_scan`),

    S_t = diag(a_t) S_{t-1} + k_t^T v_t,    o_t = q_t S_t,    a_t = exp(g_t),

after its own feature maps and gates. Rank ``r`` holds the contiguous tokens
``[r n, (r + 1) n)``. It runs the mechanism's chunked form on them from a zero
state, which gives its intra-rank output and its *memory state*
``M_r = sum_t exp(G_end - G_t) k_t^T v_t`` with the rank's total decay
``A_r = exp(G_end)``. One all-gather shares every ``(M_j, A_j)`` (size
``Dk x Dv`` per head, independent of ``N``); the state entering rank ``r`` is
``S_r = A_{r-1} S_{r-1} + M_{r-1}`` folded from rank 0, and the output gains
``(q_t * exp(G_t)) S_r`` with ``G_t`` the rank's running log-decay. Without
causality (no decay allowed) every query reads ``sum_j M_j``.

Backward: everything is autograd except the all-gather, whose adjoint is an
all-reduce of the gathered states' gradients (again ``N``-independent).
Normalised mechanisms carry their normaliser ``z`` as a column of ones in ``v``.
Delta rules are not of this form (their state update is not diagonal) and are refused.
"""
from __future__ import annotations

import torch

from .. import registry
from ..builders.linear_pipeline import _normalised, _ones_column
from ..kernels.positions import repeat_kv
from ..validation import check_params, check_qkv, check_scale
from .comm import Group


def lasp2_attention(q, k, v, mechanism: str = "linear", *, group=None, causal: bool = True,
                    scale: float | None = None, **params) -> torch.Tensor:
    """``attnkit.attention(q, k, v, mechanism, ...)`` of a linear-family mechanism, sequence-parallel.

    Args:
        q, k, v: this rank's contiguous shard ``(B, H, N / P, D)`` / ``(B, Hkv, N / P, .)``
            (:class:`attnkit.distributed.Sharding` with ``layout="contiguous"``).
        mechanism: a mechanism built on the shared recurrence (linear, performer, based, flatten,
            lln, retention, lightning, mamba2, gla).
        **params: its parameters; per-token tensor inputs (e.g. GLA's ``gk``) as this rank's shard.
    Returns:
        this rank's output shard ``(B, H, N / P, Dv)``.
    """
    g = Group(group, "lasp2_attention")
    spec = registry.get(mechanism)
    recurrence = spec.extra.get("recurrence")
    if recurrence is None:
        linear = sorted(n for n in registry.names() if "recurrence" in registry.get(n).extra)
        raise ValueError(f"lasp2_attention runs mechanisms with a diagonal state recurrence ({', '.join(linear)}); "
                         f"{mechanism!r} is not one (use ulysses_attention)")
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"lasp2_attention shards one sequence: q has {q.shape[2]} local tokens but k has {k.shape[2]}")
    params = dict(check_params(spec, params))
    chunk_size = params.pop("chunk_size")
    scale = check_scale(scale, q.shape[-1])
    B, H, n, D = q.shape
    g.agree([B, H, k.shape[1], n, D, v.shape[-1], int(causal)],
            ["batch", "heads", "kv heads", "local sequence length", "head_dim", "value head_dim", "causal"], q.device)
    fq, fk, fv, log_decay = recurrence["prepare"](q, repeat_kv(k, H), repeat_kv(v, H), scale=scale, **params)
    if log_decay is not None and not causal:
        raise ValueError("a decayed/gated recurrence is only defined causally; pass causal=True")
    if recurrence["normalise"]:
        fv = _ones_column(fv)
    if causal:
        out, memory = recurrence["chunked_kernel"](fq, fk, fv, log_decay, None, causal=True, chunk_size=chunk_size)
        out = out + _from_earlier_ranks(g, fq, memory, log_decay)
    else:
        memory = fk.transpose(-1, -2) @ fv
        out = fq @ _AllGather.apply(memory, g).sum(dim=0)
    if recurrence["normalise"]:
        eps = params.get(recurrence["eps_param"], 0.0) if recurrence["eps_param"] else 0.0
        length = (g.rank + 1) * n if causal else g.size * n
        out = _normalised(out, n, length, causal, eps)
    return out


def _from_earlier_ranks(g: Group, fq, memory, log_decay):
    """``(q_t * exp(G_t)) S_r``: what the tokens of ranks ``0 .. r-1`` add to this rank's outputs.

    ``S_r = sum_{j<r} exp(sum_{j<i<r} log A_i) M_j``, written as one weighted sum over *all* gathered
    states (weight 0 for ``j >= r``) so that every rank's backward reaches the all-gather's adjoint,
    a collective that every rank must call.
    """
    memories = _AllGather.apply(memory, g)  # (P, B, H, Dk, Dv)
    later = torch.arange(g.size, device=fq.device) >= g.rank
    if log_decay is None:
        weights = (~later).to(memory.dtype).view(-1, 1, 1, 1, 1)
        return fq @ (weights * memories).sum(dim=0)
    totals = _AllGather.apply(log_decay.sum(dim=2), g)  # (P, B, H) or (P, B, H, Dk): log A_j
    through = totals.cumsum(dim=0)  # log of the decay from rank 0's start to the end of rank j
    before_me = through[g.rank - 1] if g.rank > 0 else torch.zeros_like(through[0])
    view = (-1, *totals.shape[1:], *((1, 1) if log_decay.ndim == 3 else (1,)))
    log_weights = (before_me - through).masked_fill(later.view(-1, *[1] * (totals.ndim - 1)), float("-inf"))
    state = (log_weights.exp().view(view) * memories).sum(dim=0)
    running = log_decay.cumsum(dim=2).exp()
    return (fq * (running[..., None] if log_decay.ndim == 3 else running)) @ state


class _AllGather(torch.autograd.Function):
    """Every rank's ``x`` stacked ``(P, ...)``; backward: all-reduce the gradient, keep this rank's slice."""

    @staticmethod
    def forward(ctx, x, g: Group):
        ctx.g = g
        if g.size == 1:
            return x[None].clone()
        return torch.stack(g.all_gather(x, "all-gather of the memory states"))

    @staticmethod
    def backward(ctx, grad):
        g = ctx.g
        grad = grad.contiguous()
        if g.size > 1:
            g.all_reduce(grad, "all-reduce of the memory states' gradients")
        return grad[g.rank], None
