"""Cross-attention over several sources: the four combination strategies of
Libovický, Helcl & Mareček, "Input Combination Strategies for Multi-Source
Transformer Decoder" (2018), which carry the flat and hierarchical strategies of
Libovický & Helcl, "Attention Strategies for Multi-Source Sequence-to-Sequence
Learning" (2017) over to the Transformer.

With decoder states ``x`` and encoder outputs ``s_1 .. s_n`` (each its own
length and width), the module returns the context ``c`` that a decoder adds to
``x`` (residually) in place of its single encoder-decoder attention:

- ``serial``:  one cross-attention per source, stacked: ``h_0 = x``,
  ``h_i = h_{i-1} + A_i(h_{i-1}, s_i)``; ``c = h_n - x``;
- ``parallel``: ``c = sum_i A_i(x, s_i)``, every source attended from ``x``;
- ``flat``: one attention whose keys and values are the concatenation of all
  sources, each projected by its own ``W_K^i``, ``W_V^i`` (one softmax over the
  states of all sources), then one output projection;
- ``hierarchical``: per-source contexts ``c_i = A_i(x, s_i)``, then a second
  attention per position over the ``n`` contexts: ``c = sum_i beta_i W_V c_i``
  with ``beta = softmax_i((W_Q x) . (W_K c_i) / sqrt(d))`` (multi-head).

Masks are per-source key-padding masks ``(B, M_i)`` (True = attend), or None.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import attention
from .attention import Attention
from ..validation import check_int, check_tokens
from .dropout import check_dropout, dropout_p
from .factory import factory_kwargs

STRATEGIES = ("serial", "parallel", "flat", "hierarchical")


@factory_kwargs
class MultiSourceCrossAttention(nn.Module):
    """Cross-attention over several sources combined by ``strategy`` (Libovický et al.'s flat,
    parallel, serial and hierarchical). See the module docstring. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`), in every
    attention of the strategy.
    """

    def __init__(self, dim: int, heads: int, source_dims, *, strategy: str = "parallel", mechanism: str = "softmax",
                 bias: bool = False, dropout: float = 0.0, **mechanism_params):
        super().__init__()
        self.dropout = check_dropout(dropout)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        source_dims = list(source_dims)
        if not source_dims:
            raise ValueError("source_dims must name the width of at least one source")
        for i, d in enumerate(source_dims):
            check_int(f"source_dims[{i}]", d)
        self.strategy, self.source_dims, self.dim = strategy, source_dims, dim
        self.sources = nn.ModuleList(
            Attention(dim, heads, context_dim=d, mechanism=mechanism, bias=bias, dropout=dropout, **mechanism_params)
            for d in source_dims
        )
        if strategy == "flat":  # one query and one output projection (source 0's) serve every source
            for layer in self.sources[1:]:
                layer.q_proj = layer.out_proj = None
        if strategy == "hierarchical":
            self.combine = Attention(dim, heads, mechanism=mechanism, bias=bias, dropout=dropout, **mechanism_params)

    def forward(self, x, sources, masks=None):
        """``x (B, N, dim)``, ``sources`` a list of ``(B, M_i, source_dims[i])`` -> context ``(B, N, dim)``."""
        check_tokens("x", x, self.dim)
        sources = list(sources)
        if len(sources) != len(self.sources):
            raise ValueError(f"expected {len(self.sources)} sources (one per source_dims entry), got {len(sources)}")
        masks = [None] * len(sources) if masks is None else list(masks)
        if len(masks) != len(sources):
            raise ValueError(f"masks must be None or a list with one entry per source ({len(sources)}), got {len(masks)}")
        for i, (s, m) in enumerate(zip(sources, masks)):
            check_tokens(f"sources[{i}]", s, self.source_dims[i])
            if s.shape[0] != x.shape[0]:
                raise ValueError(f"sources[{i}] has batch {s.shape[0]} but x has {x.shape[0]}")
            if m is not None and (m.dtype != torch.bool or tuple(m.shape) != (s.shape[0], s.shape[1])):
                raise ValueError(f"masks[{i}] must be a boolean key-padding mask of shape {(s.shape[0], s.shape[1])}")
        if self.strategy == "serial":
            h = x
            for layer, s, m in zip(self.sources, sources, masks):
                h = h + layer(h, s, mask=_padding(m))
            return h - x
        if self.strategy == "parallel":
            return sum(layer(x, s, mask=_padding(m)) for layer, s, m in zip(self.sources, sources, masks))
        if self.strategy == "flat":
            return self._flat(x, sources, masks)
        contexts = torch.stack([layer(x, s, mask=_padding(m)) for layer, s, m in zip(self.sources, sources, masks)], 2)
        B, N, n, D = contexts.shape
        # One attention per decoder position, over the n source contexts.
        return self.combine(x.reshape(B * N, 1, D), contexts.reshape(B * N, n, D)).reshape(B, N, D)

    def _flat(self, x, sources, masks):
        first = self.sources[0]
        q = first.split_heads(first.q_proj(x), first.heads)
        kvs = [layer.project_kv(s) for layer, s in zip(self.sources, sources)]
        k, v = torch.cat([kv[0] for kv in kvs], dim=2), torch.cat([kv[1] for kv in kvs], dim=2)
        mask = None
        if any(m is not None for m in masks):
            mask = torch.cat([m if m is not None else torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
                              for s, m in zip(sources, masks)], dim=1)[:, None, None, :]
        out = attention(q, k, v, first.mechanism, mask=mask, dropout_p=dropout_p(self), **first.mechanism_params)
        return first.merge_heads(out, x)


def _padding(mask):
    return None if mask is None else mask[:, None, None, :]
