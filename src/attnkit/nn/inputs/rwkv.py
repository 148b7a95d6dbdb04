"""The data-dependent decays and transition vectors of RWKV-6 and RWKV-7 (their input modules).

Peng et al., "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence" and
"RWKV-7 "Goose" with Expressive Dynamic State Evolution". Both papers compute these from the
token-shifted input ``lerp(x_t, x_{t-1}, mu)``; an input module sees the new tokens only, so
here they are computed from ``x_t`` (the token shift belongs to the RWKV block: ``attnkit.nn.RWKV6TimeMix``, ``RWKV7TimeMix``). Initialised as
the authors' code does for a middle layer: decays spread from slow to fast across the channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.positions import repeat_kv


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads * d) -> (B, heads, N, d)``."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _low_rank(dim: int, rank: int, out: int) -> nn.Sequential:
    """``tanh(x W_1) W_2``: the papers' LoRA of the data-dependent terms, starting near zero."""
    up = nn.Linear(rank, out, bias=False)
    nn.init.uniform_(up.weight, -0.01, 0.01)
    return nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Tanh(), up)


class RWKV6Decay(nn.Module):
    """RWKV-6's decay ``w_t = exp(-exp(d_t))`` with ``d_t = d + tanh(x_t W_1) W_2`` per channel and
    the bonus ``u``; returns ``log_w = -exp(d_t)`` ``(B, H, N, Dk)`` and ``u`` ``(H, Dk)``."""

    def __init__(self, dim: int, heads: int, head_dim: int, rank: int = 32):
        super().__init__()
        self.heads = heads
        n = torch.arange(heads * head_dim) / max(heads * head_dim - 1, 1)
        self.time_decay = nn.Parameter(-6 + 5 * n ** 1.35)
        self.decay_lora = _low_rank(dim, rank, heads * head_dim)
        c = torch.arange(head_dim)
        self.time_first = nn.Parameter((0.5 * (1 - c / max(head_dim - 1, 1)) + ((c + 1) % 3 - 1) * 0.1).repeat(heads, 1))

    def forward(self, x, q, k, v) -> dict:
        d = self.time_decay + self.decay_lora(x)
        return {"log_w": _heads_first(-d.exp(), self.heads).to(q.dtype), "u": self.time_first.to(q.dtype)}


class RWKV7Inputs(nn.Module):
    """RWKV-7's decay ``w_t = exp(-e^-0.5 sigmoid(w_0 + tanh(x_t W_1) W_2))``, learning rate
    ``a_t = sigmoid(a_0 + x_t A_1 A_2)`` and removal key ``kappa^_t = normalise(k_t . xi)`` per head;
    returns ``log_w``, ``a = -kappa^`` and ``b = kappa^ . a_t``, each ``(B, H, N, Dk)``."""

    def __init__(self, dim: int, heads: int, head_dim: int, rank: int = 32):
        super().__init__()
        self.heads = heads
        n = torch.arange(heads * head_dim) / max(heads * head_dim - 1, 1)
        self.w0 = nn.Parameter(-6.5 + 5 * n ** 1.55)
        self.decay_lora = _low_rank(dim, rank, heads * head_dim)
        self.a0 = nn.Parameter(torch.zeros(heads * head_dim))
        self.rate_lora = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, heads * head_dim, bias=False))
        self.key_scale = nn.Parameter(torch.full((head_dim,), 0.85))

    def forward(self, x, q, k, v) -> dict:
        log_w = -0.606531 * torch.sigmoid(self.w0 + self.decay_lora(x))
        rate = torch.sigmoid(self.a0 + self.rate_lora(x))
        kappa = F.normalize(repeat_kv(k, self.heads) * self.key_scale.to(k.dtype), dim=-1)
        rate = _heads_first(rate, self.heads).to(q.dtype)
        return {"log_w": _heads_first(log_w, self.heads).to(q.dtype), "a": -kappa, "b": kappa * rate}
