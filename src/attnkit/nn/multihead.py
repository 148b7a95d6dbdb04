"""A drop-in for ``torch.nn.MultiheadAttention`` backed by any attnkit mechanism.

Same constructor, parameter names (so ``load_state_dict`` of a torch module
works), call signature and mask conventions (torch's: in ``attn_mask`` and
``key_padding_mask`` a boolean True means *masked*). With
``mechanism="softmax"`` the output equals torch's module. Two torch features
return or act on the softmax weight matrix itself — ``need_weights=True`` and
attention-weight dropout while training — and are refused with a ValueError
for other mechanisms instead of being ignored. A fully masked query row gives
zeros (torch gives NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..api import attention
from ..scores.normalisers import SOFTMAX
from ..validation import check_int, check_params
from .dropout import check_dropout
from .factory import check_factory_kwargs


class MultiheadAttention(nn.Module):
    """A drop-in for ``torch.nn.MultiheadAttention`` (same arguments and outputs) backed by any
    attnkit ``mechanism``. See the module docstring.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, *, mechanism="softmax",
                 **mechanism_params):
        super().__init__()
        check_factory_kwargs(device, dtype)
        check_int("embed_dim", embed_dim)
        check_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        dropout = check_dropout(dropout)
        self.spec = registry.get(mechanism)
        if self.spec.tensor_names:
            raise ValueError(f"mechanism {mechanism!r} needs tensor inputs {list(self.spec.tensor_names)}; "
                             f"use attnkit.nn.Attention, which can learn them")
        self.mechanism, self.mechanism_params = mechanism, dict(check_params(self.spec, mechanism_params))
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **kw))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **kw))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **kw))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **kw))
            self.register_parameter("in_proj_weight", None)
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **kw)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self):
        """torch's initialisation: Xavier-uniform projections, zero biases, Xavier-normal bias_k/v."""
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = self._check_inputs(query, key, value)
        q, k, v = (t if batched else t.unsqueeze(1 if not self.batch_first else 0) for t in (query, key, value))
        if not self.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
        if key_padding_mask is not None and not batched:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True needs attn_mask (as in torch, is_causal is a hint that attn_mask is causal)")
        softmax = self.mechanism == "softmax"
        dropout = self.dropout if self.training else 0.0
        explicit = need_weights or dropout > 0
        if not softmax and explicit:
            what = "need_weights=True" if need_weights else f"dropout={self.dropout} in training mode"
            raise ValueError(f"{what} acts on softmax attention weights, which mechanism {self.mechanism!r} "
                             f"does not form; pass need_weights=False and use dropout=0 or eval()")
        pad_allowed, pad_additive = _torch_mask("key_padding_mask", key_padding_mask, (B, S), q.dtype)
        attn_allowed, attn_additive = _torch_mask("attn_mask", attn_mask, (L, S), q.dtype, B, self.num_heads)
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        # A verified causal attn_mask becomes causal=True, which every causal mechanism understands.
        causal = bool(is_causal) and not explicit and extra == 0 and _is_causal_mask(attn_allowed, attn_additive, L, S)
        if is_causal and not softmax and not causal:
            raise ValueError(f"is_causal=True with mechanism {self.mechanism!r} needs attn_mask to be exactly the "
                             f"causal mask, with no add_bias_kv/add_zero_attn keys")
        if causal:
            attn_allowed = attn_additive = None
        allowed = _both(pad_allowed, attn_allowed, torch.logical_and)
        additive = _both(pad_additive, attn_additive, torch.add)
        qh, kh, vh = self._project(q, k, v)
        if extra:  # the appended keys are visible to every query
            allowed = F.pad(allowed, (0, extra), value=True) if allowed is not None else None
            additive = F.pad(additive, (0, extra)) if additive is not None else None
        mask = _combine(allowed, additive)
        weights = None
        if need_weights or dropout > 0:
            scores = (qh @ kh.transpose(-1, -2)) * self.head_dim ** -0.5
            if additive is not None:
                scores = scores + additive
            w = SOFTMAX.weights(scores, _allowed_pairs(allowed, additive, scores))
            out = F.dropout(w, p=dropout) @ vh
            if need_weights:
                weights = w.mean(dim=1) if average_attn_weights else w
        else:
            out = attention(qh, kh, vh, self.mechanism, causal=causal, mask=mask, **self.mechanism_params)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1 if not self.batch_first else 0)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    def _project(self, q, k, v):
        E, H = self.embed_dim, self.num_heads
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(v, wv, bv)
        if self.bias_k is not None:
            B = k.shape[0]
            k = torch.cat([k, self.bias_k.expand(B, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, E)], dim=1)
        split = lambda t: t.unflatten(-1, (H, E // H)).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        if self.add_zero_attn:
            k = F.pad(k, (0, 0, 0, 1))
            v = F.pad(v, (0, 0, 0, 1))
        return q, k, v

    def _check_inputs(self, query, key, value) -> bool:
        for name, t, width in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim not in (2, 3) or t.shape[-1] != width:
                layout = "(batch, seq, E)" if self.batch_first else "(seq, batch, E)"
                raise ValueError(f"{name} must have shape {layout} or (seq, E) with E={width}, got {tuple(t.shape)}")
        if not query.ndim == key.ndim == value.ndim:
            raise ValueError(f"query, key and value must all be batched or all unbatched; got {query.ndim}-D, "
                             f"{key.ndim}-D and {value.ndim}-D")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must agree in batch and seq")
        b = 0 if self.batch_first else 1
        if query.ndim == 3 and query.shape[b] != key.shape[b]:
            raise ValueError(f"query has batch {query.shape[b]} but key has {key.shape[b]}")
        return query.ndim == 3


def _torch_mask(name, m, shape, dtype, batch=None, heads=None):
    """A torch mask (True = masked) as (allowed bool 4-D or None, additive float 4-D or None)."""
    if m is None:
        return None, None
    if not isinstance(m, torch.Tensor) or not (m.dtype == torch.bool or m.is_floating_point()):
        raise TypeError(f"{name} must be a bool or float tensor, got {getattr(m, 'dtype', type(m).__name__)}")
    if m.is_floating_point() and m.dtype != dtype:
        raise TypeError(f"{name} has dtype {m.dtype} but the inputs are {dtype}")
    if tuple(m.shape) == shape:
        m = m[:, None, None, :] if heads is None else m[None, None]
    elif heads is not None and tuple(m.shape) == (batch * heads, *shape):
        m = m.view(batch, heads, *shape)
    else:
        expected = f"{shape}" if heads is None else f"(L, S) = {shape} or (batch * num_heads, L, S) = {(batch * heads, *shape)}"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(m.shape)}")
    return (~m, None) if m.dtype == torch.bool else (None, m)


def _both(a, b, op):
    if a is None or b is None:
        return a if b is None else b
    return op(a, b)


def _combine(allowed, additive):
    """One attnkit mask (True = attend, or additive float) from the two parts."""
    if additive is None:
        return allowed
    if allowed is None:
        return additive
    return torch.where(allowed, additive, torch.full_like(additive, float("-inf")))


def _allowed_pairs(allowed, additive, scores):
    ok = None if additive is None else ~torch.isneginf(additive)
    if allowed is not None:
        ok = allowed if ok is None else (ok & allowed)
    return ok.expand_as(scores) if ok is not None else None


def _is_causal_mask(allowed, additive, L, S) -> bool:
    """Whether the masks are exactly the (top-left == bottom-right for L == S) causal pattern."""
    if L != S or (additive is not None and not bool(((additive == 0) | torch.isneginf(additive)).all())):
        return False
    ok = _allowed_pairs(allowed, additive, torch.empty(1, 1, L, S))
    causal = torch.ones(L, S, dtype=torch.bool).tril()
    return ok is not None and bool((ok == causal).all())
