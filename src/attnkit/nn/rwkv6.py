"""The RWKV-6 (Finch) time-mixing block around the ``rwkv6`` mechanism: data-dependent token shift,
group norm and output gate.

Peng et al., "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence" (2024),
section 4 (eq. 9-19), and the authors' ``RWKV_Tmix_x060`` (BlinkDL/RWKV-LM, RWKV-v6). For the block
input ``x_t`` (``dim``, ``heads`` of ``head_dim``), with ``x'_t = x_{t-1} - x_t`` (``x_0 = 0``):

    lora_s(y) = lambda_s + tanh(y A) B_s                                  (one shared A, five B_s)
    ddlerp_s(x_t) = x_t + x'_t . lora_s(x_t + x'_t . mu_x)              for s in w, k, v, r, g
    r_t, k_t, v_t = ddlerp_r W_r, ddlerp_k W_k, ddlerp_v W_v
    d_t = d + tanh(ddlerp_w D_1) D_2,   w_t = exp(-exp(d_t))             the data-dependent decay
    g_t = silu(ddlerp_g W_g)
    p_t = rwkv6(r, k, v; log_w = -exp(d), u)                           ``wkv`` with the bonus ``u``
    o_t = (GroupNorm_heads(p_t) . g_t) W_o                               ``eps = 64e-5`` (the authors')

The state carries the last input ``x_{t-1}`` beside the ``wkv`` state, so running a sequence in
pieces equals running it at once. The channel mix is not part of it. Initial values (the authors
set them per layer depth; here one setting): ``mu = lambda = 0.5``, ``d`` spread from slow to fast
decays across the channels, the bonus ``u`` as ``RWKV6Decay`` starts it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..state import RecurrentState
from ..validation import check_int, check_tokens
from .factory import factory_kwargs


class RWKV6State:
    """``shift`` ``(B, dim)``: the last input token; ``wkv``: the ``rwkv6`` mechanism's state."""

    def __init__(self, shift: torch.Tensor, wkv: RecurrentState):
        self.shift, self.wkv = shift, wkv
        self.length = wkv.length


@factory_kwargs
class RWKV6TimeMix(nn.Module):
    """RWKV-6's time mixing, ``(B, N, dim) -> (B, N, dim)``, causal; see the module docstring. No
    ``dropout=``: the recurrence forms no softmax attention weights to drop."""

    paper = "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence"

    def __init__(self, dim: int, heads: int, *, rank: int = 32, decay_rank: int = 64, chunk_size: int = 32):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("rank", rank), ("decay_rank", decay_rank),
                            ("chunk_size", chunk_size)):
            check_int(name, value)
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.dim, self.heads, self.head_dim, self.chunk_size = dim, heads, dim // heads, chunk_size
        self.mix_x = nn.Parameter(torch.full((dim,), 0.5))  # mu_x
        self.mix = nn.Parameter(torch.full((5, dim), 0.5))  # lambda_w, lambda_k, lambda_v, lambda_r, lambda_g
        self.mix_down = nn.Linear(dim, 5 * rank, bias=False)  # A (five blocks of rank columns)
        self.mix_up = nn.Parameter(torch.empty(5, rank, dim).uniform_(-0.01, 0.01))  # B_s
        self.receptance, self.key, self.value, self.gate = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.output = nn.Linear(dim, dim, bias=False)
        n = torch.arange(dim) / max(dim - 1, 1)
        self.decay = nn.Parameter(-6 + 5 * n ** 1.35)  # d
        self.decay_down = nn.Linear(dim, decay_rank, bias=False)
        self.decay_up = nn.Linear(decay_rank, dim, bias=False)
        nn.init.uniform_(self.decay_up.weight, -0.01, 0.01)
        c = torch.arange(self.head_dim)
        self.bonus = nn.Parameter((0.5 * (1 - c / max(self.head_dim - 1, 1)) + ((c + 1) % 3 - 1) * 0.1).repeat(heads, 1))
        self.norm = nn.GroupNorm(heads, dim, eps=64e-5)

    def forward(self, x: torch.Tensor, *, state: RWKV6State | None = None, return_state: bool = False):
        check_tokens("x", x, self.dim)
        if state is not None and not isinstance(state, RWKV6State):
            raise TypeError(f"state must be an RWKV6State returned by this layer, got {type(state).__name__}")
        B, N, C = x.shape
        previous = x.new_zeros(B, 1, C) if state is None else state.shift[:, None].to(x.dtype)
        shifted = torch.cat([previous, x[:, :-1]], dim=1) - x
        low = torch.tanh(self.mix_down(x + shifted * self.mix_x)).unflatten(-1, (5, -1))  # (B, N, 5, rank)
        amounts = self.mix + torch.einsum("bnsr,src->bnsc", low, self.mix_up)  # (B, N, 5, dim)
        xw, xk, xv, xr, xg = (x + shifted * amounts[:, :, s] for s in range(5))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        log_w = -torch.exp(self.decay + self.decay_up(torch.tanh(self.decay_down(xw))))
        r, k, v, log_w = (self._heads(t) for t in (r, k, v, log_w))
        p, wkv = attention(r, k, v, "rwkv6", causal=True, chunk_size=self.chunk_size, log_w=log_w,
                           u=self.bonus.to(x.dtype), state=None if state is None else state.wkv, return_state=True)
        p = self.norm(p.transpose(1, 2).reshape(B * N, C)).view(B, N, C)
        out = self.output(p * g)
        return (out, RWKV6State(x[:, -1], wkv)) if return_state else out

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, heads, N, head_dim)``."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
