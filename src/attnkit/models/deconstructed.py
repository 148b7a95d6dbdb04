"""Deconstructing Attention's variants: attention with one design principle relaxed.

Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for Effective
Language Modeling" (2025), section 3. Standard attention (``O = softmax(Q K^T / sqrt(d_h)) V``,
``Q, K, V = H W_{Q,K,V}``, ``H`` the layer's hidden states) follows four principles: it mixes
tokens, its weights depend on the sequence, it has the dot-product + softmax form, and its Q and
K come from the current layer's hidden states. Each variant relaxes one::

    token mixing      MLP (3.2):          O = FC_Dn(SiLU(FC_Gt(H)) * FC_Up(H))     (eq. 4-5)
    form              Approximate (3.3):  A ~ Taylor_2(Q K^T / sqrt(d_h))           (eq. 6, Based)
                      Non-approximate:    A = softmax_j((Q (x) K) 1 / sqrt(d_h)),   (eq. 7-8)
                                          Q = SiLU(H W_Q), K, V = H W_{K,V}
    sequence          RndEmbQK (3.4):     X = Blocks_{<l}(eps), eps ~ N(0, s^2 I)  (eq. 9-10)
      dependence                          Q, K = X W_{Q,K};  V = H W_V
                      FixedSeqQK:         X = Blocks_{<l}(Emb(t_s)), t_s a fixed text (eq. 11-12)
    current Q/K       StaticEmbQK (3.5):  Q, K = e W_{Q,K};  V = H W_V;  e = Emb(t) (eq. 13)

Approximate is attnkit's ``based`` mechanism (the second-order Taylor feature map of Arora et
al., which the paper follows; one normaliser for the three orders, as in Based). The other five
are the mixers here (``{"deconstructed": kind, ...}`` in :class:`attnkit.models.ModelConfig`).

Readings where the paper leaves a choice (stated in ``attnkit info`` and ``docs/models-hf.md``):

- Non-approximate's score of token ``j`` is ``s_j = sum_d q_jd k_jd / sqrt(d_h)``; query ``i``
  weighs tokens ``j <= i`` by ``softmax_j(s_j)`` (eq. 18, the causal running form), so the
  weights depend on the key's position only. A call continuing a state attends over one extra
  "prior" key with score ``log sum_{j<start} e^{s_j}`` and value the prior output: exactly eq. 18.
- The MLP's hidden width matches the attention's parameters: ``3 d h = 4 d (heads * d_h)``.
- RndEmbQK / FixedSeqQK: the fixed sequence runs through the same model's blocks below layer
  ``l`` (with the same weights, so gradients reach them), and layer ``l``'s Q, K are projections
  of that stream's hidden states after the layer's input norm (as ``H`` is in a pre-norm block).
  ``eps`` has the token embeddings' initial scale (``s = 0.02``) and is a fixed buffer; FixedSeqQK's
  ``t_s`` is given as token ids (the paper: the first 2048 tokens of FineWeb; ``attnkit bench
  deconstruct`` uses the first tokens of the training text). Sequences may not be longer than it.
- StaticEmbQK's ``e`` is the token embedding itself, without a norm (eq. 13 writes ``e W``).
- Q and K get RoPE as the standard layers of the model do (the paper's base model is Qwen2.5).

Incremental calls equal one call: the MLP keeps only a length, Non-approximate its running
log-normaliser and output, the Q/K-source variants their keys and values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..positional import RoPE
from ..validation import check_float, check_int, check_mixer_kind

QK_SOURCE = {"static_emb_qk": "embedding", "rnd_emb_qk": "fixed", "fixed_seq_qk": "fixed"}
OPTIONS = {"mlp": (), "non_approximate": (), "static_emb_qk": (), "rnd_emb_qk": ("length", "sigma"),
           "fixed_seq_qk": ("tokens",)}


def check_deconstructed_mixer(spec: dict) -> dict:
    """Validate ``{"deconstructed": kind, **options}``; returns the options with defaults filled in."""
    kind, options = check_mixer_kind(spec, "deconstructed", OPTIONS)
    if kind == "rnd_emb_qk":
        options = {"length": check_int("length", options.get("length", 256)),
                   "sigma": check_float("sigma", options.get("sigma", 0.02), positive=True, finite=True)}
    if kind == "fixed_seq_qk":
        tokens = options.get("tokens")
        if not isinstance(tokens, (list, tuple)) or not tokens or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
            raise ValueError("deconstructed 'fixed_seq_qk' needs tokens=[...]: the fixed text's token ids "
                             f"(non-negative ints), got {tokens!r}")
        options = {"tokens": list(tokens)}
    return options


class TokenCount:
    """The state of a mixer that mixes no tokens: only how many it has seen."""

    def __init__(self, length: int):
        self.length = length


class GatedMLP(nn.Module):
    """The MLP variant: ``FC_Dn(SiLU(FC_Gt(H)) * FC_Up(H))``, no token mixing, attention's parameter count."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        hidden = round(4 * heads * head_dim / 3)
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, *, causal=True, mask=None, state=None, return_state=False):
        _check_call("the MLP variant", causal, mask)
        out = self.down(F.silu(self.gate(x)) * self.up(x))
        if not return_state:
            return out
        return out, TokenCount((state.length if state is not None else 0) + x.shape[1])


class NonApproximateState:
    """Tokens seen, ``log sum_j e^{s_j}`` per head ``(B, H)`` and the last output ``(B, H, Dv)``."""

    def __init__(self, length: int, log_norm: torch.Tensor, out: torch.Tensor):
        self.length, self.log_norm, self.out = length, log_norm, out


class NonApproximate(nn.Module):
    """Non-approximate attention: softmax over time of the self-gated scores ``s_j = q_j . k_j / sqrt(d_h)``."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, heads * head_dim, bias=False) for _ in range(3))
        self.out_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def scores_and_values(self, x):
        """``s (B, H, N)`` and ``v (B, H, N, D)`` of eq. 7-8."""
        q = F.silu(_heads(self.q_proj(x), self.heads))
        k, v = _heads(self.k_proj(x), self.heads), _heads(self.v_proj(x), self.heads)
        return (q * k).sum(-1) / math.sqrt(self.head_dim), v

    def forward(self, x, *, causal=True, mask=None, state=None, return_state=False):
        _check_call("Non-approximate attention", causal, mask)
        s, v = self.scores_and_values(x)
        keys, values = s[..., None], v
        if state is not None:  # the prior tokens as one key: score log sum e^s, value their output
            keys = torch.cat([state.log_norm[..., None, None].to(s.dtype), keys], dim=2)
            values = torch.cat([state.out[:, :, None].to(v.dtype), values], dim=2)
        ones = torch.ones_like(s[..., None])
        out = attention(ones, keys, values, "softmax", causal=True, scale=1.0)  # query i: keys <= i (+ prior)
        y = self.out_proj(out.transpose(1, 2).flatten(2))
        if not return_state:
            return y
        log_norm = torch.logsumexp(keys[..., 0], dim=-1)
        length = (state.length if state is not None else 0) + x.shape[1]
        return y, NonApproximateState(length, log_norm, out[:, :, -1])


class SourceKV:
    """Keys ``(B, H, n, D)`` and values seen so far, as new tensors on every call (states are values)."""

    def __init__(self, length: int, k: torch.Tensor, v: torch.Tensor):
        self.length, self.k, self.v = length, k, v


class SourcedQKAttention(nn.Module):
    """Softmax attention whose Q and K are projections of another stream than the values' ``H``
    (StaticEmbQK: the token embeddings; RndEmbQK / FixedSeqQK: a fixed sequence's hidden states)."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, source: str, rope: bool = True):
        super().__init__()
        self.heads, self.source = heads, source
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, heads * head_dim, bias=False) for _ in range(3))
        self.out_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.rope = RoPE(head_dim) if rope else None

    def forward(self, x, *, qk_input, causal=True, mask=None, state=None, return_state=False):
        """``qk_input (B or 1, N, dim)``: the Q/K stream at the positions of ``x``."""
        _check_call("this attention variant", causal, mask)
        if qk_input.shape[-2] != x.shape[1]:
            raise ValueError(f"qk_input covers {qk_input.shape[-2]} positions, x has {x.shape[1]}")
        start = state.length if state is not None else 0
        q, k = (_heads(p(qk_input), self.heads).expand(x.shape[0], -1, -1, -1) for p in (self.q_proj, self.k_proj))
        v = _heads(self.v_proj(x), self.heads)
        if self.rope is not None:
            pos = torch.arange(start, start + x.shape[1], device=x.device)
            q, k = self.rope.rotate(q, pos), self.rope.rotate(k, pos)
        if state is not None:
            k, v = torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2)
        y = self.out_proj(attention(q, k, v, "softmax", causal=True).transpose(1, 2).flatten(2))
        return (y, SourceKV(start + x.shape[1], k, v)) if return_state else y


class FixedStream(nn.Module):
    """RndEmbQK's random embeddings ``eps (1, L, dim)`` or FixedSeqQK's fixed token ids ``t_s``."""

    def __init__(self, kind: str, options: dict, dim: int):
        super().__init__()
        if kind == "rnd_emb_qk":
            self.register_buffer("eps", torch.randn(1, options["length"], dim) * options["sigma"])
            self.tokens = None
        else:
            self.register_buffer("tokens", torch.tensor(options["tokens"], dtype=torch.long)[None])
            self.eps = None
        self.length = options["length"] if kind == "rnd_emb_qk" else len(options["tokens"])

    def embedded(self, embed: nn.Embedding) -> torch.Tensor:
        if self.tokens is not None:
            if int(self.tokens.max()) >= embed.num_embeddings:
                raise ValueError(f"fixed_seq_qk tokens must be < vocab_size={embed.num_embeddings}")
            return embed(self.tokens)
        return self.eps.to(embed.weight.dtype)


def build_deconstructed(spec: dict, dim: int, heads: int, head_dim: int) -> nn.Module:
    kind = spec["deconstructed"]
    if kind == "mlp":
        return GatedMLP(dim, heads, head_dim)
    if kind == "non_approximate":
        return NonApproximate(dim, heads, head_dim)
    return SourcedQKAttention(dim, heads, head_dim, source=QK_SOURCE[kind], rope=spec["rope"])


def _heads(t, heads):
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _check_call(name, causal, mask):
    if not causal:
        raise ValueError(f"{name} is causal here (a decoder layer); pass causal=True")
    if mask is not None:
        raise ValueError(f"{name} takes no mask")
