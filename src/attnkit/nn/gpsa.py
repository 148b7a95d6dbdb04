"""Gated positional self-attention (GPSA), from d'Ascoli et al., "ConViT: Improving Vision
Transformers with Soft Convolutional Inductive Biases" (2021), section 3.

Each head mixes content attention with a learned positional attention through a gate
``lambda_h`` (eq. 5):

    A^h_ij = (1 - sigmoid(lambda_h)) softmax_j(Q^h_i K^h_j^T / sqrt(D_h))
             + sigmoid(lambda_h)     softmax_j(v_pos^h . r_ij)

over the patches of an ``H x W`` grid, with ``r_ij = (|d|^2, d_1, d_2)`` for the offset
``d = p_j - p_i`` between the patches' positions. The positional part starts as a
convolution (eq. 3-4, "locality strength" ``alpha`` and a per-head centre ``Delta_h`` on a
grid around the patch): ``v_pos^h = -alpha (1, -2 Delta^h_1, -2 Delta^h_2)``, so head ``h``
attends around ``p_i + Delta_h``; ``lambda_h = 1`` at initialisation (mostly positional).
The output is ``A V`` through a projection; the class token joins only after the GPSA layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..families.luong import masked_softmax
from ..validation import check_divides, check_float, check_int, check_tokens
from .dropout import check_dropout, drop_weights
from .factory import factory_kwargs


@factory_kwargs
class GatedPositionalSelfAttention(nn.Module):
    """``forward(x, grid=(H, W)) -> (B, H W, dim)`` for patch tokens ``x (B, H W, dim)`` in row-major order.

    ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`), on the gated mixture ``A``.
    """

    def __init__(self, dim: int, heads: int, *, locality_strength: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.dropout = check_dropout(dropout)
        check_int("dim", dim)
        check_int("heads", heads)
        check_divides("dim", dim, "heads", heads)
        check_float("locality_strength", locality_strength, positive=True)
        self.dim, self.heads = dim, heads
        self.qk = nn.Linear(dim, 2 * dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.ones(heads))  # lambda_h
        side = math.ceil(math.sqrt(heads))  # head centres on a side x side grid around the patch
        centres = torch.tensor([(i - side // 2, j - side // 2) for i in range(side) for j in range(side)][:heads],
                               dtype=torch.float32)
        v_pos = -locality_strength * torch.cat([torch.ones(heads, 1), -2 * centres], dim=1)
        self.v_pos = nn.Parameter(v_pos)  # (heads, 3) acting on (|d|^2, d_1, d_2)

    def positional_scores(self, grid, device, dtype) -> torch.Tensor:
        """``v_pos^h . r_ij`` for every pair of patches: ``(heads, N, N)``."""
        rows, cols = grid
        ys, xs = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], dim=-1).to(dtype)  # (N, 2)
        d = pos[None, :, :] - pos[:, None, :]  # d_ij = p_j - p_i
        r = torch.cat([(d ** 2).sum(-1, keepdim=True), d], dim=-1)  # (N, N, 3)
        return torch.einsum("ijc,hc->hij", r, self.v_pos.to(dtype))

    def forward(self, x, grid):
        check_tokens("x", x, self.dim)
        B, N, _ = x.shape
        if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid) \
                or grid[0] * grid[1] != N:
            raise ValueError(f"grid must be (rows, cols) of positive ints with rows * cols = {N} tokens, got {grid!r}")
        Dh = self.dim // self.heads
        q, k = self.qk(x).view(B, N, 2, self.heads, Dh).permute(2, 0, 3, 1, 4)
        v = self.v(x).view(B, N, self.heads, Dh).transpose(1, 2)
        everything = torch.ones(N, N, dtype=torch.bool, device=x.device)
        content = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(Dh), everything)
        positional = masked_softmax(self.positional_scores(grid, x.device, x.dtype), everything)
        g = torch.sigmoid(self.gate).to(x.dtype)[None, :, None, None]
        weights = (1 - g) * content + g * positional
        return self.proj((drop_weights(self, weights) @ v).transpose(1, 2).reshape(B, N, self.dim))
