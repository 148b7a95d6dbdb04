"""The RWKV-7 time-mixing block around the ``rwkv7`` mechanism: token shift, bonus, group norm, gate.

Peng et al., "RWKV-7 "Goose" with Expressive Dynamic State Evolution" (2025), section 4 and the
authors' ``RWKV_Tmix_x070`` (BlinkDL/RWKV-LM, RWKV-v7). For the block input ``x_t`` (``dim = C``,
``heads`` of ``head_dim``), with the token shift ``x'_t = x_{t-1} - x_t`` (``x_0 = 0`` at the start):

    x^s_t = x_t + mu_s . x'_t                 for s in r, w, k, v, a, g (six learned mixes)
    r_t = x^r W_r,  k_t = x^k W_k,  v_t = x^v W_v
    w_t = exp(-e^-0.5 sigmoid(w_0 + tanh(x^w W_w1) W_w2))             per-channel decay in (e^-e^-0.5, 1)
    a_t = sigmoid(a_0 + x^a W_a1 W_a2)                                  in-context learning rate
    g_t = sigmoid(x^g W_g1) W_g2                                        output gate
    kappa^_t = normalise_per_head(k_t . xi),   k~_t = k_t . (1 + (a_t - 1) . alpha)
    wkv_t = wkv_{t-1} (diag(w_t) - kappa^_t^T (a_t . kappa^_t)) + v_t^T k~_t,   p_t = wkv_t r_t^T   (``rwkv7``)
    o_t = (GroupNorm_heads(p_t) + ((r_t . rho . k~_t) summed per head) v_t) . g_t) W_o

(the bonus term is the paper's ``u_t``; the group norm has one group per head and ``eps = 64e-5`` as
in the authors' code). The state carries the last input ``x_{t-1}`` beside the ``wkv`` state, so
running a sequence in pieces equals running it at once. Left out: the value residual (``v`` mixed
with the first layer's ``v``), which crosses layers and belongs to the model, and the channel mix.
Initial values (the authors set them per layer depth; here one setting): ``mu = 0.5``, ``xi = 0.85``,
``alpha = 1``, ``rho = 0``, ``w_0`` spread from slow to fast decays across the channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..state import RecurrentState
from ..validation import check_int, check_tokens
from .factory import factory_kwargs


class RWKV7State:
    """``shift`` ``(B, dim)``: the last input token; ``wkv``: the ``rwkv7`` mechanism's state."""

    def __init__(self, shift: torch.Tensor, wkv: RecurrentState):
        self.shift, self.wkv = shift, wkv
        self.length = wkv.length


def _low_rank(dim: int, rank: int, out: int, *, tanh: bool) -> nn.Sequential:
    up = nn.Linear(rank, out, bias=False)
    nn.init.uniform_(up.weight, -0.01, 0.01)
    return nn.Sequential(nn.Linear(dim, rank, bias=False), *([nn.Tanh()] if tanh else []), up)


@factory_kwargs
class RWKV7TimeMix(nn.Module):
    """RWKV-7's time mixing, ``(B, N, dim) -> (B, N, dim)``, causal; see the module docstring. No
    ``dropout=``: the recurrence forms no softmax attention weights to drop."""

    paper = 'RWKV-7 "Goose" with Expressive Dynamic State Evolution'

    def __init__(self, dim: int, heads: int, *, rank: int = 32, chunk_size: int = 32):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("rank", rank), ("chunk_size", chunk_size)):
            check_int(name, value)
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.dim, self.heads, self.head_dim, self.chunk_size = dim, heads, dim // heads, chunk_size
        self.mix = nn.Parameter(torch.full((6, dim), 0.5))  # mu_r, mu_w, mu_k, mu_v, mu_a, mu_g
        self.receptance, self.key, self.value = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.output = nn.Linear(dim, dim, bias=False)
        n = torch.arange(dim) / max(dim - 1, 1)
        self.w0 = nn.Parameter(-6.5 + 5 * n ** 1.55)  # slow to fast decays across the channels
        self.decay_lora = _low_rank(dim, rank, dim, tanh=True)
        self.a0 = nn.Parameter(torch.zeros(dim))
        self.rate_lora = _low_rank(dim, rank, dim, tanh=False)
        self.gate_lora = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Sigmoid(), nn.Linear(rank, dim, bias=False))
        self.removal_scale = nn.Parameter(torch.full((dim,), 0.85))  # xi
        self.replacement_scale = nn.Parameter(torch.ones(dim))  # alpha
        self.bonus = nn.Parameter(torch.zeros(heads, self.head_dim))  # rho
        self.norm = nn.GroupNorm(heads, dim, eps=64e-5)

    def forward(self, x: torch.Tensor, *, state: RWKV7State | None = None, return_state: bool = False):
        check_tokens("x", x, self.dim)
        if state is not None and not isinstance(state, RWKV7State):
            raise TypeError(f"state must be an RWKV7State returned by this layer, got {type(state).__name__}")
        B, N, C = x.shape
        previous = x.new_zeros(B, 1, C) if state is None else state.shift[:, None].to(x.dtype)
        shifted = torch.cat([previous, x[:, :-1]], dim=1) - x
        xr, xw, xk, xv, xa, xg = (x + shifted * m for m in self.mix.to(x.dtype))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        log_w = -math.exp(-0.5) * torch.sigmoid(self.w0 + self.decay_lora(xw))
        rate = torch.sigmoid(self.a0 + self.rate_lora(xa))
        g = self.gate_lora(xg)
        kappa = F.normalize(self._heads(k * self.removal_scale), dim=-1)
        k = k * (1 + (rate - 1) * self.replacement_scale)
        r, k, v, log_w, rate = (self._heads(t) for t in (r, k, v, log_w, rate))
        p, wkv = attention(r, k, v, "rwkv7", causal=True, chunk_size=self.chunk_size, log_w=log_w, a=-kappa,
                           b=kappa * rate, state=None if state is None else state.wkv, return_state=True)
        p = self.norm(p.transpose(1, 2).reshape(B * N, C)).view(B, N, C)
        bonus = (r * k * self.bonus[:, None]).sum(-1, keepdim=True) * v  # (B, H, N, head_dim)
        out = self.output((p + bonus.transpose(1, 2).reshape(B, N, C)) * g)
        return (out, RWKV7State(x[:, -1], wkv)) if return_state else out

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim) -> (B, heads, N, head_dim)``."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
