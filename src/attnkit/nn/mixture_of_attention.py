"""MoA, from Zhang et al., "Mixture of Attention Heads: Selecting Attention Heads Per Token".

A pool of ``experts`` attention heads, each with its own query projection
``W_q^i`` and output projection ``W_o^i``; the key and value projections are
shared by all experts. A router picks ``top_k`` experts per token,
``G(x_t) = topk(softmax(W_g x_t))``, and the output is the gated sum

    y_t = sum_{i in G(x_t)} p_{t,i} W_o^i Attention(x_t W_q^i, K, V),

with ``p_{t,i}`` the router probability (as in the authors' code, not
renormalised over the chosen k). Compute grows with ``top_k``, parameters with
``experts``.

Two forms give the same function:

- ``form="sparse"`` (default): only the k chosen heads of each token attend (the
  cheap query projections are computed for all experts, then gathered); the
  chosen heads share one K/V head, so the attention runs as multi-query
  attention with k query heads, and its KV cache holds a single head;
- ``form="dense"``: every expert attends, unchosen ones get gate 0 (the definition).

While training, ``aux_loss`` holds the Switch-style load-balancing loss
``experts * sum_i P_i f_i`` of the authors' code (``P_i`` mean router probability,
``f_i`` fraction of routed slots at expert ``i``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import registry
from ..api import attention
from ..validation import check_int, check_params, check_tokens
from .dropout import check_dropout, check_dropout_support, dropout_p
from .factory import factory_kwargs


@factory_kwargs
class MixtureOfAttentionHeads(nn.Module):
    """Mixture of Attention Heads (MoA, Zhang et al.): ``top_k`` of ``experts`` query/output
    projections per token over shared keys and values. See the module docstring. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`)
    (one-shot calls; incremental calls drop nothing).
    """

    def __init__(self, dim: int, experts: int, top_k: int, head_dim: int, *, mechanism: str = "softmax",
                 dropout: float = 0.0, **mechanism_params):
        super().__init__()
        self.dropout = check_dropout(dropout)
        for name, value in (("dim", dim), ("experts", experts), ("top_k", top_k), ("head_dim", head_dim)):
            check_int(name, value)
        if top_k > experts:
            raise ValueError(f"top_k={top_k} exceeds experts={experts}")
        spec = registry.get(mechanism)
        if spec.tensor_names:
            raise ValueError(f"mechanism {mechanism!r} needs tensor inputs {list(spec.tensor_names)}; MoA takes none")
        check_dropout_support(spec, self.dropout)
        self.mechanism, self.mechanism_params = mechanism, dict(check_params(spec, mechanism_params))
        self.dim, self.experts, self.top_k, self.head_dim = dim, experts, top_k, head_dim
        self.router = nn.Linear(dim, experts, bias=False)
        self.q_experts = nn.Parameter(torch.randn(experts, head_dim, dim) / math.sqrt(dim))
        self.o_experts = nn.Parameter(torch.randn(experts, dim, head_dim) / math.sqrt(head_dim * top_k))
        self.k_proj = nn.Linear(dim, head_dim, bias=False)
        self.v_proj = nn.Linear(dim, head_dim, bias=False)
        self.aux_loss = None

    def route(self, x: torch.Tensor):
        """Chosen experts ``(B, N, k)`` and their gates ``(B, N, k)``."""
        probs = self.router(x).softmax(-1)
        gates, chosen = probs.topk(self.top_k, dim=-1)
        if self.training:
            counts = torch.zeros_like(probs).scatter(-1, chosen, 1.0).flatten(0, -2).sum(0)
            P = probs.flatten(0, -2).mean(0)
            self.aux_loss = self.experts * (P * counts / counts.sum()).sum()
        return chosen, gates

    def forward(self, x, context=None, *, causal=False, mask=None, state=None, return_state=False, form="sparse"):
        """``x (B, N, dim) -> (B, N, dim)``: self-attention, or cross-attention over ``context``."""
        check_tokens("x", x, self.dim)
        if form not in ("sparse", "dense"):
            raise ValueError(f"form must be 'sparse' or 'dense', got {form!r}")
        if context is not None:
            check_tokens("context", context, self.dim)
            if state is not None or return_state:
                raise ValueError("MoA keeps incremental state for self-attention only; pass context without state")
        src = x if context is None else context
        k, v = self.k_proj(src)[:, None], self.v_proj(src)[:, None]  # one shared head: (B, 1, M, head_dim)
        chosen, gates = self.route(x)
        q = torch.einsum("edc,bnc->bned", self.q_experts, x)  # projections are cheap next to attention
        slots = chosen[..., None].expand(-1, -1, -1, self.head_dim)
        q = q.gather(2, slots) if form == "sparse" else q
        q = q.transpose(1, 2)  # (B, k or experts, N, head_dim)
        incremental = return_state or state is not None
        kw = dict(state=state, return_state=True) if incremental else {"dropout_p": dropout_p(self)}
        out = attention(q, k, v, self.mechanism, causal=causal, mask=mask, **kw, **self.mechanism_params)
        if incremental:
            out, state = out
        out = out.transpose(1, 2)  # (B, N, k or experts, head_dim)
        if form == "sparse":
            out = torch.zeros(*out.shape[:2], self.experts, self.head_dim, dtype=out.dtype, device=out.device).scatter(
                2, slots, out * gates[..., None])
        else:
            out = out * torch.zeros_like(x[..., :1].expand(-1, -1, self.experts)).scatter(-1, chosen, gates)[..., None]
        y = torch.einsum("bned,ecd->bnc", out, self.o_experts)
        return (y, state) if return_state else y
