"""Agent attention block: pooled agent tokens, agent biases and the depthwise convolution on V.

Han et al., "Agent Attention: On the Integration of Softmax and Linear
Attention" (2024). Over an ``h x w`` grid of tokens, ``n = a x a`` agent tokens
``A`` are the 2-D average pools of the queries, and::

    V_A = softmax(A K^T * scale + B_1) V          agent aggregation  (n x N weights)
    O   = softmax(Q A^T * scale + B_2) V_A + DWC(V)   agent broadcast + 3x3 depthwise conv
    out = O W_O

The agent biases are the paper's: each of ``B_1 (heads, n, N)`` and ``B_2 (heads,
N, n)`` is a block bias (a learned ``7 x 7`` map per head and agent, bilinearly
resized to the grid) plus a row bias and a column bias. Both softmaxes run
through ``attnkit.attention(..., "softmax")`` with the bias as additive mask.
Without biases and DWC this is the ``"agent"`` mechanism (which pools in 1-D).
Non-causal (agents pool every query), so there is no decoding state.

The two variants of the authors' code:

- ``reduction=r`` (Agent-PVT): keys and values come from the grid reduced by an
  ``r x r`` stride-``r`` convolution and a LayerNorm (PVT's spatial reduction); the
  agent-to-key biases are sized to the reduced grid, and the DWC runs on V upsampled
  (bilinear) back to the full grid;
- ``class_token=True`` (Agent-DeiT): token 0 is a class token outside the grid; the
  agents pool the grid's queries only, the class token's key and query get learned
  biases of their own (a column of ``B_1``, a row of ``B_2``), and the DWC adds to the
  grid tokens only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..validation import check_int, check_tokens
from .token_conv import TokenConv
from .dropout import check_dropout, dropout_p
from .factory import factory_kwargs

BLOCK_BIAS = 7  # the learned block bias maps are 7 x 7, resized to the grid


def _bias(*shape):
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(shape), std=0.02))


@factory_kwargs
class AgentAttention(nn.Module):
    """Agent attention block (Agent Attention, Han et al.): pooled agent tokens, agent biases and a
    depthwise convolution on V; ``(B, N, dim) -> (B, N, dim)`` over a ``grid`` of tokens. See the module docstring.
    ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`), in both softmaxes (as the authors' ``attn_drop``).
    """

    paper = "Agent Attention: On the Integration of Softmax and Linear Attention"

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, agents: int = 49, kernel_size: int = 3,
                 qkv_bias: bool = True, reduction: int = 1, class_token: bool = False, dropout: float = 0.0):
        super().__init__()
        self.dropout = check_dropout(dropout)
        check_int("dim", dim)
        check_int("heads", heads)
        check_int("agents", agents)
        check_int("reduction", reduction)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        side = math.isqrt(agents)
        if side * side != agents:
            raise ValueError(f"agents must be a square number (agents pool an a x a grid), got {agents}")
        self.dwc = TokenConv(dim, kernel_size, grid)  # checks grid
        h, w = grid
        if h % reduction or w % reduction:
            raise ValueError(f"reduction={reduction} must divide the grid {h}x{w}")
        if reduction > 1 and class_token:
            raise ValueError("reduction and class_token are separate variants (Agent-PVT, Agent-DeiT); pick one")
        self.dim, self.heads, self.grid, self.agents, self.side = dim, heads, grid, agents, side
        self.reduction, self.class_token = reduction, class_token
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if reduction > 1:
            self.reduce = nn.Conv2d(dim, dim, reduction, stride=reduction)
            self.reduce_norm = nn.LayerNorm(dim)
        n, (kh, kw) = agents, self.key_grid
        self.agent_block = _bias(heads, n, BLOCK_BIAS, BLOCK_BIAS)  # B_1: agents -> keys
        self.agent_row, self.agent_col = _bias(heads, n, kh, 1), _bias(heads, n, 1, kw)
        self.query_block = _bias(heads, n, BLOCK_BIAS, BLOCK_BIAS)  # B_2: queries -> agents
        self.query_row, self.query_col = _bias(heads, h, 1, n), _bias(heads, 1, w, n)
        if class_token:
            self.agent_to_class, self.class_to_agent = _bias(heads, n, 1), _bias(heads, 1, n)

    @property
    def key_grid(self) -> tuple[int, int]:
        """The grid of the keys and values: the token grid, reduced by ``reduction``."""
        return self.grid[0] // self.reduction, self.grid[1] // self.reduction

    def biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``B_1 (heads, agents, keys)`` and ``B_2 (heads, queries, agents)`` (class token first, if any)."""
        H, n, (h, w) = self.heads, self.agents, self.grid
        b1 = F.interpolate(self.agent_block, size=self.key_grid, mode="bilinear") + self.agent_row + self.agent_col
        b2 = F.interpolate(self.query_block, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
        b2 = b2 + self.query_row + self.query_col
        b1, b2 = b1.reshape(H, n, -1), b2.reshape(H, h * w, n)
        if self.class_token:
            b1, b2 = torch.cat([self.agent_to_class, b1], dim=-1), torch.cat([self.class_to_agent, b2], dim=-2)
        return b1, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, [1 +] h * w, dim)`` (the class token first, then the row-major grid) -> same shape."""
        check_tokens("x", x, self.dim)
        B, N, C = x.shape
        h, w = self.grid
        extra = int(self.class_token)
        if N != h * w + extra:
            what = "a class token and " if extra else ""
            raise ValueError(f"x has {N} tokens; {what}the grid {h}x{w} need {h * w + extra}")
        q_weight, kv_weight = self.qkv.weight.split([C, 2 * C])
        q_bias, kv_bias = (None, None) if self.qkv.bias is None else self.qkv.bias.split([C, 2 * C])
        q = F.linear(x, q_weight, q_bias)
        k, v = F.linear(self._key_tokens(x), kv_weight, kv_bias).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        D = q.shape[-1]
        grid_q = q[:, :, extra:].reshape(B * self.heads, h, w, D).permute(0, 3, 1, 2)
        a = F.adaptive_avg_pool2d(grid_q, self.side).flatten(2).transpose(1, 2).reshape(B, self.heads, self.agents, D)
        b1, b2 = (b.to(x.dtype)[None] for b in self.biases())
        v_agents = attention(a, k, v, "softmax", mask=b1, dropout_p=dropout_p(self))
        out = attention(q, a, v_agents, "softmax", mask=b2, dropout_p=dropout_p(self)).transpose(1, 2).flatten(2)
        conv = self.dwc(self._full_grid(v[:, :, extra:].transpose(1, 2).flatten(2)), causal=False)[0]
        return self.proj(torch.cat([out[:, :extra], out[:, extra:] + conv], dim=1))

    def _key_tokens(self, x):
        """The tokens keys and values are computed from: x, or its grid reduced (Agent-PVT)."""
        if self.reduction == 1:
            return x
        B, _, C = x.shape
        image = x.transpose(1, 2).reshape(B, C, *self.grid)
        return self.reduce_norm(self.reduce(image).flatten(2).transpose(1, 2))

    def _full_grid(self, tokens):
        """Value tokens on the key grid, upsampled (bilinear) to the token grid when it was reduced."""
        if self.reduction == 1:
            return tokens
        B, _, C = tokens.shape
        image = tokens.transpose(1, 2).reshape(B, C, *self.key_grid)
        return F.interpolate(image, size=self.grid, mode="bilinear").flatten(2).transpose(1, 2)
