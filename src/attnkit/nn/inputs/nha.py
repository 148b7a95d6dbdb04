"""The layer computing Native Hybrid Attention's gate logits (the input module of ``nha``)."""
from __future__ import annotations

from torch import nn


class SlotGates(nn.Module):
    """Learns NHA's gate logits in a layer: ``slot_gate = W_f x``, ``head_dim`` slots per kv head."""

    def __init__(self, *, dim: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.kv_heads, self.slots = kv_heads, head_dim
        self.proj = nn.Linear(dim, kv_heads * head_dim, bias=False)

    def forward(self, x, q, k, v) -> dict:
        return {"slot_gate": self.proj(x).unflatten(-1, (self.kv_heads, self.slots)).transpose(1, 2)}
