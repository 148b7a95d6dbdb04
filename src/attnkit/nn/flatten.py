"""FLatten's focused linear attention block, with its rank-restoring depthwise convolution.

Han et al., "FLatten Transformer: Vision Transformer using Focused Linear
Attention" (2023): the focused linear attention of each head (the ``"flatten"``
mechanism: ``f_p`` feature map with the learned scale ``softplus(s)``, no
``1/sqrt(d)``) plus a depthwise convolution on V that restores the rank of the
attention matrix::

    O = Phi_p(Q) Phi_p(K)^T V / (normaliser) + DWC(V),     out = O W_O

As in the paper the DWC has ``head_dim`` channels shared by all heads (kernel 5).
With ``grid=(h, w)`` tokens are a row-major image and the DWC is the paper's 2-D
convolution (non-causal); without a grid it is a 1-D convolution over the
sequence, causal when ``causal=True``, and decoding carries :class:`FLattenState`
(the mechanism's state and the conv's last ``kernel_size - 1`` values).
With ``positions=P`` the layer has the paper's learned position embedding of the
keys (``(1, P, dim)``, zero at init, added to K before the feature map; it fixes the
number of tokens, so calls and decoding may cover at most ``P`` positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..validation import check_int, check_tokens
from .token_conv import TokenConv
from .factory import factory_kwargs


class FLattenState:
    """The linear-attention state and the DWC's conv state; ``length`` = tokens consumed."""

    def __init__(self, attn, conv: torch.Tensor):
        self.attn, self.conv = attn, conv
        self.length = attn.length


@factory_kwargs
class FocusedLinearAttention(nn.Module):
    """FLatten's focused linear attention block with its rank-restoring depthwise convolution;
    ``(B, N, dim) -> (B, N, dim)``. See the module docstring. No ``dropout=``: linear attention
    never forms the attention weights, so there are none to drop.
    """

    paper = "FLatten Transformer: Vision Transformer using Focused Linear Attention"

    def __init__(self, dim: int, heads: int, *, kernel_size: int = 5, grid: tuple[int, int] | None = None,
                 focusing_factor: float = 3.0, qkv_bias: bool = False, chunk_size: int = 64,
                 positions: int | None = None):
        super().__init__()
        check_int("dim", dim)
        check_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.params = {"focusing_factor": focusing_factor, "chunk_size": chunk_size}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.scale = nn.Parameter(torch.zeros(heads, self.head_dim))  # softplus(0) at init, as the paper
        self.dwc = TokenConv(self.head_dim, kernel_size, grid)
        self.proj = nn.Linear(dim, dim)
        if positions is not None:
            check_int("positions", positions)
        self.key_positions = None if positions is None else nn.Parameter(torch.zeros(1, positions, dim))

    def forward(self, x: torch.Tensor, *, causal: bool = False, state: FLattenState | None = None,
                return_state: bool = False):
        """``x (B, N, dim)`` -> ``(B, N, dim)``; with ``return_state`` (causal only) also the state."""
        check_tokens("x", x, self.dim)
        if state is not None and not isinstance(state, FLattenState):
            raise TypeError(f"state must be a FLattenState returned by this layer, got {type(state).__name__}")
        B, N, _ = x.shape
        start = 0 if state is None else state.length
        if self.key_positions is not None and start + N > self.key_positions.shape[1]:
            raise ValueError(f"x covers positions {start}..{start + N - 1} but the layer was built with "
                             f"positions={self.key_positions.shape[1]} (its key position embedding)")
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.key_positions is not None:
            k = k + self.key_positions[:, start : start + N]
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        incremental = return_state or state is not None
        kw = dict(state=None if state is None else state.attn, return_state=True) if incremental else {}
        out = attention(q, k, v, "flatten", causal=causal, scale=1.0, focus_scale=F.softplus(self.scale).to(x.dtype),
                        **self.params, **kw)
        if incremental:
            out, attn_state = out
        conv, conv_state = self.dwc(v.reshape(B * self.heads, N, self.head_dim), causal=causal,
                                    state=None if state is None else state.conv)
        out = out + conv.view_as(v)
        out = self.proj(out.transpose(1, 2).flatten(2))
        return (out, FLattenState(attn_state, conv_state)) if return_state else out
