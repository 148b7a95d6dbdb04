"""The Mamba-2 block around the SSD mechanism.

Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality" (2024), the Mamba-2 block::

    z, xBC = x W_in                                 (d_inner, d_inner + 2 groups d_state)
    x, B, C = silu(conv1d(xBC))                     causal depthwise conv, kernel 4
    dt = softplus(x W_dt + dt_bias),  A = -exp(A_log)   (Mamba2Gate; W_dt is W_in's last rows)
    y_t = C_t h_t + D x_t,  h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t       per head (the "mamba2" mechanism)
    out = RMSNorm(y * silu(z)) W_out                gated RMSNorm, then the output projection

``B`` and ``C`` (k and q of ``attnkit.attention(..., "mamba2")``) come in
``groups`` (Mamba-2's ``ngroups``, default 1): head ``h`` reads group
``h // (heads / groups)``, as in the paper's multi-value / grouped form; ``x`` is
split into heads of ``head_dim`` (its v).
Decoding carries :class:`Mamba2State`: the conv's last 3 inputs and the SSD state,
so running a sequence in pieces equals running it at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..validation import check_int, check_tokens
from .inputs.linear import Mamba2Gate
from .token_conv import TokenConv
from .factory import factory_kwargs


class Mamba2State:
    """The conv state ``(B, conv channels, kernel - 1)`` and the SSD state; ``length`` = tokens consumed."""

    def __init__(self, conv: torch.Tensor, ssm):
        self.conv, self.ssm = conv, ssm
        self.length = ssm.length


@factory_kwargs
class Mamba2Layer(nn.Module):
    """The Mamba-2 block around the SSD mechanism (projections, short convolution, gating);
    ``(B, N, dim) -> (B, N, dim)``. See the module docstring. No ``dropout=``: the SSD recurrence
    forms no softmax attention weights to drop.
    """

    paper = "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space Duality"

    def __init__(self, dim: int, *, head_dim: int = 64, state_dim: int = 64, expand: int = 2, conv_kernel: int = 4,
                 chunk_size: int = 64, groups: int = 1, dt_limit: tuple[float, float] = (0.0, float("inf"))):
        super().__init__()
        for name, value in (("dim", dim), ("head_dim", head_dim), ("state_dim", state_dim), ("expand", expand),
                            ("conv_kernel", conv_kernel), ("chunk_size", chunk_size), ("groups", groups)):
            check_int(name, value)
        inner = expand * dim
        if inner % head_dim:
            raise ValueError(f"expand * dim = {inner} must be a multiple of head_dim={head_dim}")
        if (inner // head_dim) % groups:
            raise ValueError(f"heads = expand * dim / head_dim = {inner // head_dim} must be a multiple of groups={groups}")
        self.dim, self.inner, self.head_dim, self.state_dim = dim, inner, head_dim, state_dim
        self.heads, self.chunk_size, self.groups = inner // head_dim, chunk_size, groups
        self.in_proj = nn.Linear(dim, 2 * inner + 2 * groups * state_dim, bias=False)
        self.gate = Mamba2Gate(dim, self.heads, dt_limit)  # dt (clamped to dt_limit) and A
        self.conv = TokenConv(inner + 2 * groups * state_dim, conv_kernel)
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = nn.RMSNorm(inner, eps=1e-5)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, *, state: Mamba2State | None = None, return_state: bool = False):
        """``x (B, N, dim)`` -> ``(B, N, dim)``, causal; with ``return_state`` also the state to continue from."""
        check_tokens("x", x, self.dim)
        if state is not None and not isinstance(state, Mamba2State):
            raise TypeError(f"state must be a Mamba2State returned by this layer, got {type(state).__name__}")
        Bsz, N, _ = x.shape
        H, P, S, G = self.heads, self.head_dim, self.state_dim, self.groups
        z, xBC = self.in_proj(x).split([self.inner, self.inner + 2 * G * S], dim=-1)
        xBC, conv_state = self.conv(xBC, causal=True, state=None if state is None else state.conv)
        xs, Bm, Cm = F.silu(xBC).split([self.inner, G * S, G * S], dim=-1)
        v = xs.unflatten(-1, (H, P)).transpose(1, 2)  # (B, H, N, P)
        k, q = (self._per_head(t, Bsz, N) for t in (Bm, Cm))
        y, ssm = attention(q, k, v, "mamba2", causal=True, scale=1.0, chunk_size=self.chunk_size,
                           state=None if state is None else state.ssm, return_state=True, **self.gate(x, q, k, v))
        y = y + self.D.to(x.dtype)[:, None, None] * v
        y = self.norm(y.transpose(1, 2).flatten(2) * F.silu(z))
        out = self.out_proj(y)
        return (out, Mamba2State(conv_state, ssm)) if return_state else out

    def _per_head(self, t, batch, n):
        """``(B, N, groups * S)`` -> ``(B, H, N, S)``: each group's B or C read by its heads (views for one group)."""
        G, S = self.groups, self.state_dim
        grouped = t.unflatten(-1, (G, S)).transpose(1, 2)[:, :, None]  # (B, G, 1, N, S)
        return grouped.expand(batch, G, self.heads // G, n, S).reshape(batch, self.heads, n, S)
