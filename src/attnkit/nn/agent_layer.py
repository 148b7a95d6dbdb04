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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from .checks import check_positive_int, check_tokens
from .token_conv import TokenConv

BLOCK_BIAS = 7  # the learned block bias maps are 7 x 7, resized to the grid


def _bias(*shape):
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(shape), std=0.02))


class AgentAttention(nn.Module):
    paper = "Agent Attention: On the Integration of Softmax and Linear Attention"

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], *, agents: int = 49, kernel_size: int = 3,
                 qkv_bias: bool = True):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        check_positive_int("agents", agents)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        side = math.isqrt(agents)
        if side * side != agents:
            raise ValueError(f"agents must be a square number (agents pool an a x a grid), got {agents}")
        self.dwc = TokenConv(dim, kernel_size, grid)  # checks grid
        h, w = grid
        self.dim, self.heads, self.grid, self.agents, self.side = dim, heads, grid, agents, side
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        n = agents
        self.agent_block = _bias(heads, n, BLOCK_BIAS, BLOCK_BIAS)  # B_1: agents -> keys
        self.agent_row, self.agent_col = _bias(heads, n, h, 1), _bias(heads, n, 1, w)
        self.query_block = _bias(heads, n, BLOCK_BIAS, BLOCK_BIAS)  # B_2: queries -> agents
        self.query_row, self.query_col = _bias(heads, h, 1, n), _bias(heads, 1, w, n)

    def biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``B_1 (heads, agents, N)`` and ``B_2 (heads, N, agents)``."""
        H, n, (h, w) = self.heads, self.agents, self.grid
        b1 = F.interpolate(self.agent_block, size=(h, w), mode="bilinear") + self.agent_row + self.agent_col
        b2 = F.interpolate(self.query_block, size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
        b2 = b2 + self.query_row + self.query_col
        return b1.reshape(H, n, h * w), b2.reshape(H, h * w, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, h * w, dim)`` (row-major grid) -> ``(B, h * w, dim)``."""
        check_tokens("x", x, self.dim)
        B, N, C = x.shape
        h, w = self.grid
        if N != h * w:
            raise ValueError(f"x has {N} tokens; the grid {h}x{w} needs {h * w}")
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        D = q.shape[-1]
        grid_q = q.reshape(B * self.heads, h, w, D).permute(0, 3, 1, 2)
        a = F.adaptive_avg_pool2d(grid_q, self.side).flatten(2).transpose(1, 2).reshape(B, self.heads, self.agents, D)
        b1, b2 = (b.to(x.dtype)[None] for b in self.biases())
        v_agents = attention(a, k, v, "softmax", mask=b1)
        out = attention(q, a, v_agents, "softmax", mask=b2)
        out = out.transpose(1, 2).flatten(2) + self.dwc(v.transpose(1, 2).flatten(2), causal=False)[0]
        return self.proj(out)
