"""Multi-head latent attention (MLA), from "DeepSeek-V2: A Strong, Economical, and
Efficient Mixture-of-Experts Language Model".

Keys and values are compressed jointly into a latent ``c = W_DKV h`` (``kv_latent``
numbers per token, RMS-normalised as in the DeepSeek-V2 model); per head
``k_C = W_UK c`` and ``v = W_UV c``. Position goes through a separate *decoupled*
RoPE part: ``q_R = RoPE(W_QR c_Q)`` per head and one ``k_R = RoPE(W_KR h)`` shared by
all heads. The score of head ``i`` is ``[q_C; q_R] . [k_C; k_R] / sqrt(head_dim +
rope_dim)``. Queries may be compressed too (``q_latent``): ``c_Q = W_DQ h``.

Only ``c`` and ``k_R`` are cached: ``kv_latent + rope_dim`` numbers per token
instead of ``2 * heads * head_dim``. Two forms give the same function:

- ``form="naive"`` materialises ``k_C`` and ``v`` for every head (the equations);
- ``form="absorbed"`` (default) folds ``W_UK`` into the query and ``W_UV`` into the
  output, so attention runs as multi-query attention directly on the cache:
  query ``[W_UK_i^T q_C; q_R]``, key ``[c; k_R]``, value ``c``, then ``W_UV_i``.

``attention_form`` picks the mechanism's form that runs the attention (default:
its first fast form). For softmax decoding ``"chunked"`` is much faster on CPU:
torch's SDPA is slow for one shared K/V head whose value width differs from
the key width (see docs/layers.md).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import registry
from ..api import attention
from ..positional import RoPE
from ..state import AppendBuffer
from ..validation import check_int, check_params, check_tokens
from .dropout import check_dropout, check_dropout_support, dropout_p
from .factory import factory_kwargs


class LatentCache:
    """The MLA cache: per token the latent ``c`` and the rotated shared key ``k_R``, side by side.

    One :class:`~attnkit.state.AppendBuffer` ``(B, capacity, kv_latent + rope_dim)``
    that grows geometrically, so a decoding step appends in place and reads keys
    ``[c; k_R]`` and values ``c`` as views, without copying the cache (when
    gradients are needed it concatenates). A cache is a value: continuing twice
    from one state gives two independent continuations.
    """

    def __init__(self, keys: torch.Tensor, *, buffer: AppendBuffer | None = None, length: int | None = None):
        self._buffer = buffer if buffer is not None else AppendBuffer((keys,), dim=1)
        self.length = keys.shape[1] if length is None else length

    def append(self, keys: torch.Tensor) -> "LatentCache":
        held = self._buffer.tensors[0]
        if keys.shape[0] != held.shape[0] or keys.shape[2] != held.shape[2]:
            raise ValueError(f"state holds (B, N, width) = ({held.shape[0]}, *, {held.shape[2]}); got "
                             f"{tuple(keys.shape)}: the state belongs to a different batch or layer")
        if torch.is_grad_enabled() and (keys.requires_grad or held.requires_grad):
            return LatentCache(torch.cat([self.keys, keys], dim=1))
        n = self.length
        return LatentCache(keys, buffer=self._buffer.extend(n, (keys,)), length=n + keys.shape[1])

    @property
    def keys(self) -> torch.Tensor:
        """``[c; k_R]`` of every token so far: ``(B, N, kv_latent + rope_dim)``."""
        return self._buffer.prefix(0, self.length)

    def numel(self) -> int:
        return self.keys.numel()


@factory_kwargs
class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention (MLA, DeepSeek-V2): keys and values from a compressed
    ``kv_latent``, decoupled RoPE on ``rope_dim`` channels. See the module docstring. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`)
    (one-shot calls; incremental calls drop nothing).
    """

    def __init__(self, dim: int, heads: int, *, head_dim: int, kv_latent: int, rope_dim: int = 16,
                 q_latent: int | None = None, mechanism: str = "softmax", rope_base: float = 10000.0,
                 attention_form: str | None = None, dropout: float = 0.0, **mechanism_params):
        super().__init__()
        self.dropout = check_dropout(dropout)
        for name, value in (("dim", dim), ("heads", heads), ("head_dim", head_dim), ("kv_latent", kv_latent),
                            ("rope_dim", rope_dim)):
            check_int(name, value)
        if q_latent is not None:
            check_int("q_latent", q_latent)
        if rope_dim % 2:
            raise ValueError(f"rope_dim must be even (RoPE rotates pairs), got {rope_dim}")
        spec = registry.get(mechanism)
        if spec.tensor_names:
            raise ValueError(f"mechanism {mechanism!r} needs tensor inputs {list(spec.tensor_names)}; MLA takes none")
        self.mechanism, self.mechanism_params = mechanism, dict(check_params(spec, mechanism_params))
        if attention_form is not None:
            spec.form(attention_form)  # refuses unknown form names now
        check_dropout_support(spec, self.dropout, attention_form)
        self.attention_form = attention_form
        self.dim, self.heads, self.head_dim, self.kv_latent, self.rope_dim = dim, heads, head_dim, kv_latent, rope_dim
        self.kv_down = nn.Linear(dim, kv_latent, bias=False)
        self.kv_norm = nn.RMSNorm(kv_latent)
        self.k_up = nn.Linear(kv_latent, heads * head_dim, bias=False)
        self.v_up = nn.Linear(kv_latent, heads * head_dim, bias=False)
        self.k_rope = nn.Linear(dim, rope_dim, bias=False)
        if q_latent is None:
            self.q_down, self.q_norm = None, None
            q_in = dim
        else:
            self.q_down, self.q_norm = nn.Linear(dim, q_latent, bias=False), nn.RMSNorm(q_latent)
            q_in = q_latent
        self.q_up = nn.Linear(q_in, heads * head_dim, bias=False)
        self.q_rope = nn.Linear(q_in, heads * rope_dim, bias=False)
        self.out_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.rope = RoPE(rope_dim, base=rope_base)

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False, form="absorbed"):
        """``x (B, N, dim) -> (B, N, dim)``; with ``return_state`` also the :class:`LatentCache`."""
        check_tokens("x", x, self.dim)
        if form not in ("absorbed", "naive"):
            raise ValueError(f"form must be 'absorbed' or 'naive', got {form!r}")
        incremental = return_state or state is not None
        if incremental and not causal:
            raise ValueError("incremental use (state / return_state) needs causal=True")
        if state is not None and not isinstance(state, LatentCache):
            raise TypeError(f"state must be the LatentCache of an earlier call, got {type(state).__name__}")
        B, N, _ = x.shape
        offset = state.length if state is not None else 0
        positions = torch.arange(offset, offset + N, device=x.device)
        keys = torch.cat([self.kv_norm(self.kv_down(x)), self.rope.rotate(self.k_rope(x), positions)], dim=-1)
        if incremental:
            state = LatentCache(keys) if state is None else state.append(keys)
            keys = state.keys
        cq = x if self.q_down is None else self.q_norm(self.q_down(x))
        q_c = self.q_up(cq).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, H, N, d_h)
        q_r = self.rope.rotate(self.q_rope(cq).unflatten(-1, (self.heads, self.rope_dim)).transpose(1, 2), positions)
        scale = 1.0 / math.sqrt(self.head_dim + self.rope_dim)
        run = self._absorbed if form == "absorbed" else self._naive
        out = run(q_c, q_r, keys, causal=causal, mask=mask, scale=scale, dropout_p=0.0 if incremental else dropout_p(self))
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return (out, state) if return_state else out

    def _naive(self, q_c, q_r, keys, **kw):
        H, M = self.heads, keys.shape[1]
        latent, k_rope = keys[..., : self.kv_latent], keys[..., self.kv_latent :]
        k_c = self.k_up(latent).unflatten(-1, (H, self.head_dim)).transpose(1, 2)
        v = self.v_up(latent).unflatten(-1, (H, self.head_dim)).transpose(1, 2)
        k = torch.cat([k_c, k_rope[:, None].expand(-1, H, M, -1)], dim=-1)
        return attention(torch.cat([q_c, q_r], dim=-1), k, v, self.mechanism, form=self.attention_form, **kw,
                         **self.mechanism_params)

    def _absorbed(self, q_c, q_r, keys, **kw):
        w_uk = self.k_up.weight.view(self.heads, self.head_dim, self.kv_latent)
        w_uv = self.v_up.weight.view(self.heads, self.head_dim, self.kv_latent)
        q = torch.cat([torch.einsum("bhnd,hdc->bhnc", q_c, w_uk), q_r], dim=-1)
        o = attention(q, keys[:, None], keys[:, None, :, : self.kv_latent], self.mechanism, form=self.attention_form, **kw,
                      **self.mechanism_params)  # (B, H, N, kv_latent)
        return torch.einsum("bhnc,hdc->bhnd", o, w_uv)
