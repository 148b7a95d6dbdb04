"""Titans' three architectures around the neural memory (the ``titans`` mechanism): MAC, MAG, MAL.

Behrouz, Zhong & Mirrokni, "Titans: Learning to Memorize at Test Time" (2025), section 4.
``M`` is the long-term memory (an MLP written at test time by gradient steps with momentum
and forgetting, :mod:`attnkit.families.titans`), ``M*`` a read that does not write, and
``P = [p_1 .. p_Np]`` the persistent memory: learnable, input-independent tokens
(``persistent``, in model space, each layer its own). The three ways to combine them with
attention::

    MAC (memory as context, 4.1): the sequence is cut into segments S(t) of C tokens,
        h_t  = M*_{t-1}(q_t),   q_t = S(t) W_Q          (retrieve, no update)
        y_t  = Attn([P || h_t || S(t)])                  (attention over persistent, retrieved, segment)
        M_t  = M_{t-1}(y_t)                              (write the attention output)
        o_t  = y_t (x) M*_t(y_t)
    MAG (memory as gate, 4.2):   x~ = [P || x],  y = SW-Attn*(x~),  o = y (x) M(x~)
    MAL (memory as layer, 4.3):  x~ = [P || x],  y = M(x~),         o = SW-Attn(y)

``(x)`` is the paper's gate: both sides normalised with learnable vector-valued weights
(RMSNorm), the memory side through a sigmoid: ``norm(y) * sigmoid(norm(m))``.
``SW-Attn*`` is sliding-window attention in which the persistent tokens stay visible
(``sinks_window`` with ``sinks = Np``). In MAL a norm sits between the memory and the
attention (the paper's stacked layers each start from a normalised input).

Causality in MAC (a language model may not see ahead): query ``i`` of a segment attends to
``P``, to ``h_j`` and ``S(t)_j`` for ``j <= i`` (``h_j`` depends on token ``j`` alone), and
``M*_t(y_t)`` reads, for token ``i``, the memory written up to token ``i`` (the mechanism's
own read-out, with the memory's mini-batch = the segment). The segment attention has no
position encoding (positions come from the causal mask, as NoPE).

The memory's surprise is soft-clamped per token (``max_grad_norm``, default 2.0, the value
titans-pytorch tests; ``None`` leaves it unbounded as the paper writes it). The paper states no
bound, but a trained MAG layer needs one: on the Shakespeare LM the outer optimiser drives the
inner step to its bound, the momentum toward 1 and the values' norms up (per-token surprise
norms from about 6 at initialisation to thousands within 60 steps), and since the gradient grows
with the cube of the memory's weights, the inner descent then diverges within one window.

Each is a mixer of :class:`attnkit.models.ModelConfig` (``{"titans": "mac", "segment": 16}``,
``attnkit train lm --mix T=mag:window=32``). Incremental calls equal one call: MAG and MAL carry
their two layers' states; MAC carries the memory at the last segment boundary and the inputs
of the unfinished segment, which it recomputes when the next tokens arrive.
"""
from __future__ import annotations

import torch
from torch import nn

from ..api import attention
from ..families.titans import read_memory
from ..nn import Attention
from ..positional import RoPE
from ..validation import check_float, check_int, check_mixer_kind

OPTIONS = {"mac": ("segment", "persistent", "max_grad_norm"), "mag": ("window", "persistent", "chunk_size", "max_grad_norm"),
           "mal": ("window", "persistent", "chunk_size", "max_grad_norm")}
DEFAULTS = {"segment": 16, "persistent": 4, "window": 32, "chunk_size": 16, "max_grad_norm": 2.0}


def check_titans_mixer(spec: dict) -> dict:
    """Validate ``{"titans": kind, **options}``; returns the options with defaults filled in."""
    kind, options = check_mixer_kind(spec, "titans", OPTIONS)
    options = {k: options.get(k, DEFAULTS[k]) for k in OPTIONS[kind]}
    if options["max_grad_norm"] in (None, "none"):
        options["max_grad_norm"] = None
    else:
        check_float("max_grad_norm", options["max_grad_norm"], positive=True, finite=True)
    for name, value in options.items():
        if name != "max_grad_norm":
            check_int(name, value, minimum=0 if name == "persistent" else 1)
    return options


class TitansState:
    """What a Titans mixer carries between calls: its parts' states; ``length`` = tokens consumed."""

    def __init__(self, length: int, **parts):
        self.length = length
        self.parts = parts


def _check_call(name, causal, mask):
    if not causal:
        raise ValueError(f"{name} is a causal architecture (the memory is a causal recurrence); pass causal=True")
    if mask is not None:
        raise ValueError(f"{name} takes no mask (padding and masks are not supported by the titans memory)")


def _prepend(persistent: nn.Parameter, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([persistent.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)


def _memory(dim, heads, head_dim, chunk_size, max_grad_norm) -> Attention:
    return Attention(dim, heads, mechanism="titans", head_dim=head_dim, chunk_size=chunk_size,
                     max_grad_norm=max_grad_norm)


def _run(layer, x, parts, name):
    """``(out, state)`` of one of MAG's or MAL's layers: with its state in ``parts`` (None: a one-shot call,
    no state)."""
    if parts is None:
        return layer(x, causal=True), None
    return layer(x, causal=True, state=parts[name], return_state=True)


def _two_layers(block, name, x, causal, mask, state, return_state):
    """MAG's and MAL's call: ``[P || x]`` on the first call (``P`` dropped from the output), then the block's
    ``_mix`` of its attention and memory, their states carried in a :class:`TitansState`."""
    _check_call(name, causal, mask)
    first = state is None
    xt = _prepend(block.persistent, x) if first else x
    parts = None
    if return_state or state is not None:
        parts = state.parts if state is not None else {"attn": None, "memory": None}
    out, s_attn, s_mem = block._mix(xt, parts)
    if first:
        out = out[:, block.persistent.shape[0]:]
    return (out, TitansState(s_mem.length, attn=s_attn, memory=s_mem)) if return_state else out


class MemoryAsGate(nn.Module):
    """Titans MAG: sliding-window attention and the neural memory side by side, mixed by a gate."""

    def __init__(self, dim, heads, kv_heads, head_dim, *, window, persistent, chunk_size, max_grad_norm=None, rope=True):
        super().__init__()
        self.persistent = nn.Parameter(torch.randn(persistent, dim) * 0.02)
        self.attn = Attention(dim, heads, mechanism="sinks_window", kv_heads=kv_heads, head_dim=head_dim,
                              rope=RoPE(head_dim) if rope else None, sinks=persistent, window=window)
        self.memory = _memory(dim, heads, head_dim, chunk_size, max_grad_norm)
        self.attn_norm, self.memory_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False):
        return _two_layers(self, "MAG", x, causal, mask, state, return_state)

    def _mix(self, xt, parts):
        y, s_attn = _run(self.attn, xt, parts, "attn")
        m, s_mem = _run(self.memory, xt, parts, "memory")
        return self.attn_norm(y) * torch.sigmoid(self.memory_norm(m)), s_attn, s_mem


class MemoryAsLayer(nn.Module):
    """Titans MAL: the neural memory as a layer, then sliding-window attention over its output."""

    def __init__(self, dim, heads, kv_heads, head_dim, *, window, persistent, chunk_size, max_grad_norm=None, rope=True):
        super().__init__()
        self.persistent = nn.Parameter(torch.randn(persistent, dim) * 0.02)
        self.memory = _memory(dim, heads, head_dim, chunk_size, max_grad_norm)
        self.norm = nn.RMSNorm(dim)
        self.attn = Attention(dim, heads, mechanism="sinks_window", kv_heads=kv_heads, head_dim=head_dim,
                              rope=RoPE(head_dim) if rope else None, sinks=persistent, window=window)

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False):
        return _two_layers(self, "MAL", x, causal, mask, state, return_state)

    def _mix(self, xt, parts):
        y, s_mem = _run(self.memory, xt, parts, "memory")
        out, s_attn = _run(self.attn, self.norm(y), parts, "attn")
        return out, s_attn, s_mem


class MemoryAsContext(nn.Module):
    """Titans MAC: per segment, attention over persistent tokens, the memory's retrieval and the segment."""

    def __init__(self, dim, heads, kv_heads, head_dim, *, segment, persistent, max_grad_norm=None):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        self.segment, self.heads, self.kv_heads = segment, heads, kv_heads
        self.persistent = nn.Parameter(torch.randn(persistent, dim) * 0.02)
        self.memory = _memory(dim, heads, head_dim, segment, max_grad_norm)
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.out_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.attn_norm, self.memory_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)

    def retrieve(self, x, memory_state):
        """``h = M*(x W_Q)``: the memory's read of the segment (the learned initial memory before any write)."""
        mem = self.memory
        q = mem.split_heads(mem.q_proj(x), self.heads)
        if memory_state is None:
            W1, W2 = mem.inputs.w1.to(x.dtype), mem.inputs.w2.to(x.dtype)
        else:
            W1, W2 = memory_state["W1"], memory_state["W2"]
        qk_l2norm = mem.mechanism_params.get("qk_l2norm", True)
        return mem.merge_heads(read_memory(q, W1, W2, scale=q.shape[-1] ** -0.5, qk_l2norm=qk_l2norm), x)

    def _segment(self, seg, memory_state):
        c, n_p = seg.shape[1], self.persistent.shape[0]
        context = torch.cat([_prepend(self.persistent, self.retrieve(seg, memory_state)), seg], dim=1)
        q = self.memory.split_heads(self.q_proj(seg), self.heads)
        k = self.memory.split_heads(self.k_proj(context), self.kv_heads)
        v = self.memory.split_heads(self.v_proj(context), self.kv_heads)
        causal = torch.ones(c, c, dtype=torch.bool, device=seg.device).tril()
        mask = torch.cat([torch.ones(c, n_p, dtype=torch.bool, device=seg.device), causal, causal], dim=1)
        y = self.out_proj(attention(q, k, v, "softmax", mask=mask[None, None]).transpose(1, 2).flatten(2))
        m, memory_state = self.memory(y, causal=True, state=memory_state, return_state=True)
        return self.attn_norm(y) * torch.sigmoid(self.memory_norm(m)), memory_state

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False):
        _check_call("MAC", causal, mask)
        memory_state = state.parts["memory"] if state is not None else None
        xs = torch.cat([state.parts["pending"], x], dim=1) if state is not None else x
        outs, pending = [], xs[:, :0]
        for start in range(0, xs.shape[1], self.segment):
            seg = xs[:, start:start + self.segment]
            out, after = self._segment(seg, memory_state)
            outs.append(out)
            if seg.shape[1] == self.segment:
                memory_state = after
            else:
                pending = seg
        out = torch.cat(outs, dim=1)[:, -x.shape[1]:]
        if not return_state:
            return out
        length = (state.length if state is not None else 0) + x.shape[1]
        return out, TitansState(length, memory=memory_state, pending=pending)


ARCHITECTURES = {"mac": MemoryAsContext, "mag": MemoryAsGate, "mal": MemoryAsLayer}


def build_titans(spec: dict, dim: int, heads: int, kv_heads: int | None, head_dim: int) -> nn.Module:
    """The module of a normalised ``{"titans": kind, "rope": bool, "params": {...}}`` mixer spec
    (MAC's segment attention has no position encoding, so it takes no ``rope``)."""
    kind = spec["titans"]
    rope = {} if kind == "mac" else {"rope": spec["rope"]}
    return ARCHITECTURES[kind](dim, heads, kv_heads, head_dim, **rope, **spec["params"])
