"""MoH, from Jin et al., "MoH: Multi-Head Attention as Mixture-of-Head Attention".

Multi-head attention is a sum over heads, ``O = sum_i H_i W_O^i``. MoH treats the
heads as experts and makes it a *weighted* sum over a per-token subset,
``O_t = sum_i g_{t,i} H_{t,i} W_O^i``, with the paper's two-stage routing:

- the first ``shared_heads`` heads are always on: ``g_i = a1 softmax(W_s x_t)_i``;
- of the other (routed) heads, the ``active_heads`` with the largest router
  logits are on: ``g_i = a2 softmax(W_r x_t)_i`` (softmax over all routed heads),
  the rest get ``g_i = 0``;
- ``[a1, a2] = softmax(W_h x_t)`` balances the two kinds.

While training, ``aux_loss`` holds the load-balance loss over routed heads,
``n_routed * sum_i f_i P_i`` (``f_i`` the fraction of tokens routed to head ``i``,
``P_i`` its mean router probability); add it to the training loss.

Everything else is :class:`~attnkit.nn.Attention` (GQA, RoPE, incremental
state, any mechanism): the gates act on the per-head outputs in
``merge_heads``. All heads are computed; skipping unselected heads' queries
would need a per-token variable-head kernel (not written).
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from ..validation import check_int
from .factory import factory_kwargs


@factory_kwargs
class MixtureOfHeads(Attention):
    """Mixture-of-Head attention (MoH, Jin et al.): ``shared_heads`` always on plus ``active_heads``
    routed per token. See the module docstring.
    """

    def __init__(self, dim: int, heads: int, *, shared_heads: int, active_heads: int, **kwargs):
        super().__init__(dim, heads, **kwargs)
        check_int("shared_heads", shared_heads, minimum=0)
        if shared_heads > heads:
            raise ValueError(f"shared_heads must be an int in [0, heads={heads}], got {shared_heads!r}")
        routed = heads - shared_heads
        if routed:
            check_int("active_heads", active_heads)
            if active_heads > routed:
                raise ValueError(f"active_heads={active_heads} exceeds the {routed} routed heads (heads - shared_heads)")
        self.shared_heads, self.active_heads = shared_heads, active_heads if routed else 0
        self.shared_router = nn.Linear(dim, shared_heads, bias=False) if shared_heads else None
        self.routed_router = nn.Linear(dim, routed, bias=False) if routed else None
        self.type_router = nn.Linear(dim, 2, bias=False) if shared_heads and routed else None
        self.aux_loss = None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token head weights ``g`` of shape ``(B, N, heads)``; zeros for unselected heads."""
        parts = []
        if self.type_router is not None:
            a = self.type_router(x).softmax(-1)
            a1, a2 = a[..., :1], a[..., 1:]
        else:
            a1 = a2 = 1.0
        if self.shared_router is not None:
            parts.append(a1 * self.shared_router(x).softmax(-1))
        if self.routed_router is not None:
            logits = self.routed_router(x)
            probs = logits.softmax(-1)
            chosen = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, logits.topk(self.active_heads, -1).indices, True)
            parts.append(a2 * probs * chosen)
            if self.training:
                f = chosen.flatten(0, -2).to(probs.dtype).mean(0)
                P = probs.flatten(0, -2).mean(0)
                self.aux_loss = probs.shape[-1] * (f * P).sum()
        return torch.cat(parts, dim=-1)

    def merge_heads(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x).transpose(1, 2)[..., None]  # (B, heads, N, 1)
        return super().merge_heads(out * g.to(out.dtype), x)
