"""``attnkit.nn.Attention``: projections + any registered mechanism + output projection.

Multi-head attention as in Vaswani et al., "Attention Is All You Need": project
the input to per-head queries, keys and values, run attention per head, and
project the concatenated heads back. The attention itself is
:func:`attnkit.attention`, so every registered mechanism plugs in by name.

- ``kv_heads < heads`` gives grouped-query attention (Ainslie et al., "GQA:
  Training Generalized Multi-Query Transformer Models from Multi-Head
  Checkpoints"); ``kv_heads=1`` is multi-query attention (Shazeer, "Fast
  Transformer Decoding: One Write-Head is All You Need").
- ``qk_norm=True`` RMS-normalises each query and key head before the scores.
- ``rope=True`` (or a :class:`attnkit.positional.RoPE`) rotates q and k of
  self-attention; positions continue across incremental calls via the state.
- ``forward(x, context)`` is cross-attention (encoder-decoder attention): keys
  and values come from ``context``. With ``return_state=True`` the projected
  context is cached, so decoding steps pass ``context=None`` and reuse it.
- ``context_parallel=group`` splits self-attention's sequence across the ranks
  of a ``torch.distributed`` group (:mod:`attnkit.distributed`): ``x`` is this
  rank's shard, ``strategy`` is ``"ring"``, ``"ulysses"`` or ``"lasp2"``.

Mechanisms whose tensor inputs (per-token gates, learned tables) must be
learned by the layer have an input module in :mod:`attnkit.nn.inputs`; see
``docs/design.md`` ("Layers and tensor inputs").
"""
from __future__ import annotations

import torch
from torch import nn

from .. import registry
from ..api import attention
from ..positional import RoPE
from .dropout import check_dropout, check_dropout_support, dropout_p
from .factory import check_factory_kwargs
from .inputs import has_input_module, input_module
from ..validation import check_int, check_params, check_tokens


class CrossAttentionCache:
    """Projected keys and values of a fixed context, reused at every decoding step."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v
        self.length = k.shape[2]


class Attention(nn.Module):
    """Multi-head attention over any registered mechanism: ``(B, N, dim) -> (B, N, dim)``.

    Args:
        dim: model width (input and output features).
        heads: query heads; ``kv_heads`` (default ``heads``) key/value heads (GQA / MQA).
        mechanism: a registered name (``attnkit.mechanisms()``; ``attnkit info NAME`` describes it).
        head_dim: per-head width (default ``dim // heads``); ``context_dim``: width of a
            cross-attention context (default ``dim``).
        rope: ``True`` or a :class:`attnkit.positional.RoPE` for self-attention; ``qk_norm``:
            RMS-normalise q and k heads; ``bias``: biases in the projections.
        dropout: dropout on the attention weights while training (mechanisms with explicit
            weights: the softmax family), as ``torch.nn.MultiheadAttention``'s.
        device, dtype: where and in what dtype the parameters are made (torch's factory kwargs).
        **mechanism_params: the mechanism's parameters, checked here against their declarations.

    ``forward(x, context=None, *, causal=False, mask=None, state=None, return_state=False)``;
    ``x`` must have the parameters' dtype (as in torch's layers: convert one side, no silent cast).
    The layer pickles (``torch.save``) by mechanism name.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mechanism: str = "softmax",
        kv_heads: int | None = None,
        head_dim: int | None = None,
        context_dim: int | None = None,
        rope=None,
        qk_norm: bool = False,
        bias: bool = False,
        dropout: float = 0.0,
        device=None,
        dtype=None,
        context_parallel=None,
        strategy: str | None = None,
        layout: str | None = None,
        **mechanism_params,
    ):
        super().__init__()
        check_factory_kwargs(device, dtype)
        dropout = check_dropout(dropout)
        check_int("dim", dim)
        check_int("heads", heads)
        kv_heads = heads if kv_heads is None else kv_heads
        check_int("kv_heads", kv_heads)
        if heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads} must divide heads={heads} (each kv head serves heads // kv_heads queries)")
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"dim={dim} is not divisible by heads={heads}; pass head_dim explicitly")
            head_dim = dim // heads
        check_int("head_dim", head_dim)
        context_dim = dim if context_dim is None else context_dim
        check_int("context_dim", context_dim)
        self.spec = registry.get(mechanism)
        names = set(self.spec.tensor_names)
        self.mechanism_params = dict(check_params(self.spec, {k: v for k, v in mechanism_params.items() if k not in names}))
        given = names & set(mechanism_params)
        if given:
            raise TypeError(f"tensor inputs {sorted(given)} are made by the layer, not passed to its constructor")
        if names and not has_input_module(mechanism):
            raise ValueError(
                f"mechanism {mechanism!r} needs tensor inputs {sorted(names)} and has no input module "
                f"(attnkit.nn.inputs) to learn them, so it cannot run inside a layer"
            )
        check_dropout_support(self.spec, dropout)
        self.dropout = dropout
        factory_kw = {"device": device, "dtype": dtype}
        self.inputs = (input_module(mechanism, dim=dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                    params=self.mechanism_params) if names else None)
        if self.inputs is not None:
            self.inputs.to(**{k: v for k, v in factory_kw.items() if v is not None})
        self.mechanism, self.dim, self.heads, self.kv_heads, self.head_dim = mechanism, dim, heads, kv_heads, head_dim
        self.context_dim = context_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=bias, **factory_kw)
        self.k_proj = nn.Linear(context_dim, kv_heads * head_dim, bias=bias, **factory_kw)
        self.v_proj = nn.Linear(context_dim, kv_heads * head_dim, bias=bias, **factory_kw)
        self.out_proj = nn.Linear(heads * head_dim, dim, bias=bias, **factory_kw)
        self.q_norm = nn.RMSNorm(head_dim, **factory_kw) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, **factory_kw) if qk_norm else None
        if rope is True:
            rope = RoPE(head_dim)
        elif rope is False:
            rope = None
        if rope is not None and not hasattr(rope, "apply"):
            raise TypeError(f"rope must be None, True or a positional encoding such as RoPE(head_dim), got {type(rope).__name__}")
        self.rope = rope
        self.head_mask = None
        self.context_parallel = None
        if context_parallel is not None:
            from ..distributed.layer import ContextParallel

            if self.dropout:
                raise ValueError("dropout is not supported with context_parallel (the strategies run without it)")

            self.context_parallel = ContextParallel(context_parallel, strategy, layout, self.spec, mechanism_params)
        elif strategy is not None or layout is not None:
            raise ValueError("strategy= and layout= choose how context_parallel= splits the sequence; pass a group")

    def split_heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        """``(B, N, heads * head_dim) -> (B, heads, N, head_dim)``."""
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.split_heads(self.k_proj(context), self.kv_heads)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, self.split_heads(self.v_proj(context), self.kv_heads)

    def forward(self, x, context=None, *, causal=False, mask=None, state=None, return_state=False):
        """``x (B, N, dim)`` -> ``(B, N, dim)``; with ``return_state`` also the state for the next call.

        Self-attention when ``context`` is None (incremental calls continue
        the sequence of the state), cross-attention over ``context (B, M,
        context_dim)`` otherwise. ``mask`` is as in :func:`attnkit.attention`.
        """
        check_tokens("x", x, self.dim)
        if x.dtype != self.q_proj.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {self.q_proj.weight.dtype}; "
                            f"convert one of them (layer.to({x.dtype}) or x.to({self.q_proj.weight.dtype}))")
        if self.context_parallel is not None:
            return self._context_parallel(x, context, causal, mask, state, return_state)
        cross = context is not None or isinstance(state, CrossAttentionCache)
        if context is not None:
            check_tokens("context", context, self.context_dim)
            if context.shape[0] != x.shape[0]:
                raise ValueError(f"context has batch {context.shape[0]} but x has {x.shape[0]}; expected the same batch")
            if state is not None:
                raise ValueError("pass either context (first call) or state (later calls) to cross-attention, not both")
        q = self.split_heads(self.q_proj(x), self.heads)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if cross:
            if isinstance(state, CrossAttentionCache):
                k, v = state.k, state.v
            else:
                k, v = self.project_kv(context)
                state = CrossAttentionCache(k, v)
            out = attention(q, k, v, self.mechanism, causal=causal, mask=mask, dropout_p=dropout_p(self),
                            **self._params(x, q, k, v))
        else:
            if isinstance(state, CrossAttentionCache):
                raise ValueError("state is a cross-attention cache; self-attention needs the state of a self-attention call")
            k, v = self.project_kv(x)
            incremental = return_state or state is not None
            kw = dict(state=state, return_state=True) if incremental else {}
            out = attention(q, k, v, self.mechanism, causal=causal, mask=mask, position=self.rope,
                            dropout_p=0.0 if incremental else dropout_p(self), **kw, **self._params(x, q, k, v))
            if incremental:
                out, state = out
        out = self.merge_heads(out, x)
        return (out, state) if return_state else out

    def _context_parallel(self, x, context, causal, mask, state, return_state):
        """Self-attention over this rank's shard ``x (B, N / P, dim)`` of a sequence split across the group."""
        if context is not None or mask is not None or state is not None or return_state:
            raise ValueError("a context-parallel layer runs one-shot self-attention: context, mask, state and "
                             "return_state are not supported")
        q = self.split_heads(self.q_proj(x), self.heads)
        if self.q_norm is not None:
            q = self.q_norm(q)
        k, v = self.project_kv(x)
        if self.rope is not None:
            positions = self.context_parallel.positions(x.shape[1], x.device)
            q, k = self.rope.rotate(q, positions), self.rope.rotate(k, positions)
        out = self.context_parallel(q, k, v, causal, self._params(x, q, k, v))
        return self.merge_heads(out, x)

    def merge_heads(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-head outputs ``(B, heads, N, Dv)`` -> ``(B, N, dim)``. ``head_mask`` (one weight per
        head; see :mod:`attnkit.nn.pruning`) scales each head first; subclasses gate heads here."""
        if self.head_mask is not None:
            out = out * self.head_mask.to(out.dtype)[None, :, None, None]
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def _params(self, x, q, k, v) -> dict:
        if self.inputs is None:
            return self.mechanism_params
        return {**self.mechanism_params, **self.inputs(x, q, k, v)}

    def extra_repr(self) -> str:
        cp = f", {self.context_parallel}" if self.context_parallel is not None else ""
        return (f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"mechanism={self.mechanism!r}{cp}")
