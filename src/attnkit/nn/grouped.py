"""Grouped key/value heads built from a multi-head checkpoint, and learned group pooling.

- :func:`mean_pool_kv`: the conversion of Ainslie et al., "GQA: Training
  Generalized Multi-Query Transformer Models from Multi-Head Checkpoints": each
  group's key and value projection is the mean of its heads' projections
  (``kv_heads=1`` is multi-query attention, Shazeer 2019).
- :class:`WeightedGQA`: Chinnakonduru & Mohapatra, "Weighted Grouped Query
  Attention in Transformers": instead of the plain mean, each group's key and
  value are a *learned* weighted sum of the original heads' keys and values,
  ``K_g = sum_{j in g} w^K_j K_j`` (one scalar per head, or one weight per
  column with ``weighting="column"``), initialised to the mean. Because
  projections are linear, the weights fold into one projection per group
  (:meth:`WeightedGQA.to_gqa`): no inference overhead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .factory import factory_kwargs


def mean_pool_kv(mha: Attention, kv_heads: int) -> Attention:
    """A GQA layer whose kv head ``g`` is the mean of ``mha``'s kv heads in group ``g``."""
    if mha.kv_heads != mha.heads:
        raise ValueError(f"mha must have kv_heads == heads (a multi-head checkpoint), got kv_heads={mha.kv_heads}")
    gqa = _like(mha, kv_heads)
    G = mha.heads // kv_heads
    for name in ("k_proj", "v_proj"):
        src, dst = getattr(mha, name), getattr(gqa, name)
        dst.weight.data.copy_(src.weight.view(kv_heads, G, mha.head_dim, -1).mean(1).flatten(0, 1))
        if src.bias is not None:
            dst.bias.data.copy_(src.bias.view(kv_heads, G, mha.head_dim).mean(1).flatten())
    return gqa


def _like(layer: Attention, kv_heads: int) -> Attention:
    """A layer with ``layer``'s configuration and query/output weights, and ``kv_heads`` kv heads."""
    out = Attention(layer.dim, layer.heads, mechanism=layer.mechanism, kv_heads=kv_heads, head_dim=layer.head_dim,
                    context_dim=layer.context_dim, rope=layer.rope, qk_norm=layer.q_norm is not None,
                    bias=layer.q_proj.bias is not None, **layer.mechanism_params)
    out = out.to(dtype=layer.q_proj.weight.dtype)
    for name in ("q_proj", "out_proj", "q_norm", "k_norm"):
        if getattr(layer, name) is not None:
            getattr(out, name).load_state_dict(getattr(layer, name).state_dict())
    return out


@factory_kwargs
class WeightedGQA(Attention):
    """GQA whose group keys/values are learned weighted sums of per-head keys/values.

    ``k_proj``/``v_proj`` keep one projection per *query* head (as in the
    multi-head checkpoint, see :meth:`from_mha`); ``k_weights``/``v_weights``
    have shape ``(kv_heads, group, 1)`` (``weighting="head"``) or
    ``(kv_heads, group, head_dim)`` (``"column"``).
    """

    def __init__(self, dim: int, heads: int, kv_heads: int, *, weighting: str = "head", **kwargs):
        super().__init__(dim, heads, kv_heads=kv_heads, **kwargs)
        if weighting not in ("head", "column"):
            raise ValueError(f"weighting must be 'head' or 'column', got {weighting!r}")
        bias = self.q_proj.bias is not None
        self.k_proj = nn.Linear(self.context_dim, heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(self.context_dim, heads * self.head_dim, bias=bias)
        G = heads // kv_heads
        shape = (kv_heads, G, 1 if weighting == "head" else self.head_dim)
        self.k_weights = nn.Parameter(torch.full(shape, 1.0 / G))
        self.v_weights = nn.Parameter(torch.full(shape, 1.0 / G))
        self.weighting = weighting

    @classmethod
    def from_mha(cls, mha: Attention, kv_heads: int, *, weighting: str = "head") -> "WeightedGQA":
        """Start from a multi-head layer: same weights, group weights at the mean (= GQA's conversion)."""
        if mha.kv_heads != mha.heads:
            raise ValueError(f"mha must have kv_heads == heads (a multi-head checkpoint), got kv_heads={mha.kv_heads}")
        layer = cls(mha.dim, mha.heads, kv_heads, weighting=weighting, mechanism=mha.mechanism, head_dim=mha.head_dim,
                    context_dim=mha.context_dim, rope=mha.rope, qk_norm=mha.q_norm is not None,
                    bias=mha.q_proj.bias is not None, **mha.mechanism_params)
        layer = layer.to(dtype=mha.q_proj.weight.dtype)
        missing = layer.load_state_dict(mha.state_dict(), strict=False).missing_keys
        assert sorted(missing) == ["k_weights", "v_weights"], missing
        return layer

    def pooled(self, proj: nn.Linear, weights: torch.Tensor):
        """The group projection ``sum_j w_j W_j`` (and bias): ``(kv_heads * head_dim, context_dim)``."""
        G, D = self.heads // self.kv_heads, self.head_dim
        w = (proj.weight.view(self.kv_heads, G, D, -1) * weights[..., None]).sum(1).flatten(0, 1)
        b = None if proj.bias is None else (proj.bias.view(self.kv_heads, G, D) * weights).sum(1).flatten()
        return w, b

    def project_kv(self, context):
        k = self.split_heads(F.linear(context, *self.pooled(self.k_proj, self.k_weights)), self.kv_heads)
        if self.k_norm is not None:
            k = self.k_norm(k)
        v = self.split_heads(F.linear(context, *self.pooled(self.v_proj, self.v_weights)), self.kv_heads)
        return k, v

    def to_gqa(self) -> Attention:
        """Fold the learned weights into a plain GQA layer (same outputs, no extra cost)."""
        gqa = _like(self, self.kv_heads)
        with torch.no_grad():
            for name, weights in (("k_proj", self.k_weights), ("v_proj", self.v_weights)):
                w, b = self.pooled(getattr(self, name), weights)
                getattr(gqa, name).weight.copy_(w)
                if b is not None:
                    getattr(gqa, name).bias.copy_(b)
        return gqa
