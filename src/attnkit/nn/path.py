"""The PaTH attention layer: projections, the short convolution on ``w``, the ``path`` mechanism.

Yang et al., "PaTH Attention: Position Encoding via Accumulating Householder Transformations"
(2025), and the authors' layer (flash-linear-attention's ``PaTHAttention``). For the layer input
``x_t`` (``dim``, ``heads`` of ``head_dim``)::

    q_t, k_t, v_t = x_t W_q, x_t W_k, x_t W_v
    w_t = normalise_per_head(silu(conv_3(x W_w1 W_w2)_t))      low-rank, then a causal depthwise
                                                               convolution over the last 3 tokens
    beta_t = 2 sigmoid(x_t W_beta + b_beta)                    per head, in (0, 2)
    g_t = log sigmoid(x_t W_g + b_g)                           per head, PaTH-FoX only
    o = path(q, k, v; w, beta, g) W_o

The convolution makes each transform ``H_t = I - beta_t w_t w_t^T`` depend on the two tokens before
``t`` as well; :class:`PaTHState` carries its last two inputs beside the ``path`` state (the keys
carried through every transform so far), so running a sequence in pieces equals running it at
once. ``w_conv=0`` leaves the convolution out (``attnkit.nn.inputs.path.PaTHInputs``, the input
module ``nn.Attention`` uses, has none, since it sees only the new tokens). Reading: the
convolution here has a bias (zero at the start), the authors' has none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..state import RecurrentState
from ..validation import check_int, check_tokens
from .factory import factory_kwargs
from .token_conv import TokenConv


class PaTHState:
    """``conv`` ``(B, heads * head_dim, w_conv - 1)`` (None without the convolution) and the ``path`` state."""

    def __init__(self, conv: torch.Tensor | None, attn: RecurrentState):
        self.conv, self.attn = conv, attn
        self.length = attn.length


@factory_kwargs
class PaTHAttention(nn.Module):
    """PaTH attention, ``(B, N, dim) -> (B, N, dim)``, causal; see the module docstring. No
    ``dropout=``: the chunked form never materialises the attention weights to drop."""

    paper = "PaTH Attention: Position Encoding via Accumulating Householder Transformations"

    def __init__(self, dim: int, heads: int, *, rank: int = 32, w_conv: int = 3, forget_gate: bool = False,
                 chunk_size: int = 64):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("rank", rank), ("chunk_size", chunk_size)):
            check_int(name, value)
        check_int("w_conv", w_conv, minimum=0)
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.dim, self.heads, self.head_dim, self.chunk_size = dim, heads, dim // heads, chunk_size
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.direction = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False))
        self.conv = TokenConv(dim, w_conv) if w_conv else None
        self.strength = nn.Linear(dim, heads)
        self.forget = nn.Linear(dim, heads) if forget_gate else None
        if self.forget is not None:
            nn.init.constant_(self.forget.bias, 3.0)  # start near no forgetting, as FoX does

    def forward(self, x: torch.Tensor, *, state: PaTHState | None = None, return_state: bool = False):
        check_tokens("x", x, self.dim)
        if state is not None and not isinstance(state, PaTHState):
            raise TypeError(f"state must be a PaTHState returned by this layer, got {type(state).__name__}")
        w, conv_state = self.direction(x), None
        if self.conv is not None:
            w, conv_state = self.conv(w, causal=True, state=None if state is None else state.conv)
            w = F.silu(w)
        q, k, v, w = (self._heads(t) for t in (self.q(x), self.k(x), self.v(x), w))
        inputs = {"w": F.normalize(w, dim=-1), "beta": 2 * torch.sigmoid(self.strength(x)).transpose(1, 2)}
        if self.forget is not None:
            inputs["g"] = F.logsigmoid(self.forget(x)).transpose(1, 2)
        o, attn = attention(q, k, v, "path", causal=True, chunk_size=self.chunk_size, return_state=True,
                            state=None if state is None else state.attn, **inputs)
        out = self.out(o.transpose(1, 2).flatten(2))
        return (out, PaTHState(conv_state, attn)) if return_state else out

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, heads, N, head_dim)``."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
