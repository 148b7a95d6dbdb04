"""Jet-Nemotron's JetBlock and the layer placement PostNAS found for Jet-Nemotron-2B.

Gu et al., "Jet-Nemotron: Efficient Language Model with Post Neural Architecture Search"
(2025), section 2.3. JetBlock is a Gated DeltaNet layer whose values pass through a causal
convolution with *dynamic* kernels generated from the input, and whose queries and keys
have no static convolution::

    q_t = silu(x_t W_q),  k_t = silu(x_t W_k),  u_t = x_t W_v
    K_t = reshape(W_2 silu(W_1 x_t) + b_2)                    (the kernel generator, (Dv_total, w))
    v_t = silu(sum_{j < w} K_t[:, j] * u_{t - w + 1 + j})      (dynamic causal convolution on values)
    beta_t = sigmoid(x_t W_b),  g_t = -exp(A_log) softplus(x_t W_a + dt_bias)
    o_t = GatedDeltaNet(q, k, v, beta, g)_t                   (``gated_deltanet``, q, k l2-normalised)
    y_t = W_o (RMSNorm(o_t) * silu(x_t W_g))                  (per head)

``W_1`` reduces the width by ``reduction`` (8 in the paper); ``W_1`` and ``W_2`` start at
zero and ``b_2`` at small random values, so training starts from a static convolution. Value
heads are ``expand_v`` times wider than key heads.

PostNAS (section 2.2) learns where full attention is kept by training a once-for-all
super-network on a pretrained model and searching it; that search needs the pretrained model.
What the paper and its released configuration specify is the result for Jet-Nemotron-2B
(28 layers): full attention in layers 15 and 20, sliding-window attention in 21 and 22
(1-based), JetBlock everywhere else: :data:`JET_NEMOTRON_2B` and :func:`jet_nemotron_config`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention
from ..state import RecurrentState
from ..validation import check_int

OPTIONS = {"conv_size": 4, "reduction": 8, "expand_v": 2}
# Jet-Nemotron-2B's layer types as released (J: JetBlock, F: full attention, S: sliding window)
JET_NEMOTRON_2B = "JJJJJJJJJJJJJJFJJJJFSSJJJJJJ"


def check_jetblock_mixer(spec: dict) -> dict:
    """Validate ``{"jetblock": {options}}``; returns the options with defaults filled in."""
    options = spec["jetblock"]
    if not isinstance(options, dict) or set(spec) != {"jetblock"}:
        raise ValueError(f"a jetblock mixer is {{'jetblock': {{option: value}}}} with options {list(OPTIONS)}, got {spec!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"jetblock takes options {list(OPTIONS)}, got unknown {unknown}")
    options = {**OPTIONS, **options}
    for name, value in options.items():
        check_int(name, value)
    return options


class JetBlockState:
    """The values' last ``conv_size - 1`` pre-convolution inputs and the delta-rule state."""

    def __init__(self, length: int, window: torch.Tensor, recurrent: RecurrentState):
        self.length, self.window, self.recurrent = length, window, recurrent

    def numel(self) -> int:
        return self.window.numel() + self.recurrent.numel()


class JetBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, *, conv_size: int = 4, reduction: int = 8,
                 expand_v: int = 2):
        super().__init__()
        check_int("conv_size", conv_size)
        self.heads, self.head_dim, self.conv_size = heads, head_dim, conv_size
        self.v_head_dim = head_dim * expand_v
        value_dim = heads * self.v_head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        self.kernel_down = nn.Linear(dim, max(1, value_dim // reduction), bias=False)
        self.kernel_up = nn.Linear(max(1, value_dim // reduction), value_dim * conv_size)
        nn.init.zeros_(self.kernel_down.weight)
        nn.init.zeros_(self.kernel_up.weight)
        nn.init.normal_(self.kernel_up.bias, std=0.02)
        self.b_proj = nn.Linear(dim, heads, bias=False)
        self.a_proj = nn.Linear(dim, heads, bias=False)
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus of dt
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        self.dt_bias._no_weight_decay = self.A_log._no_weight_decay = True
        self.g_proj = nn.Linear(dim, value_dim, bias=False)
        self.o_norm = nn.RMSNorm(self.v_head_dim)
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The dynamic convolution kernels ``(B, N, value_dim, conv_size)`` generated from ``x``."""
        flat = self.kernel_up(F.silu(self.kernel_down(x)))
        return flat.unflatten(-1, (-1, self.conv_size))

    def dynamic_conv(self, u: torch.Tensor, kernels: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """``silu(sum_j K_t[:, j] u_{t-w+1+j})`` with ``window`` the ``w - 1`` inputs before ``u``."""
        padded = torch.cat([window, u], dim=1)  # (B, w - 1 + N, value_dim)
        taps = padded.unfold(1, self.conv_size, 1)  # (B, N, value_dim, w)
        return F.silu((taps * kernels).sum(-1))

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False):
        if not causal:
            raise ValueError("JetBlock is a causal recurrence; pass causal=True")
        if mask is not None:
            raise ValueError("JetBlock takes no mask")
        B, N, _ = x.shape
        split = lambda t, d: t.unflatten(-1, (-1, d)).transpose(1, 2)  # noqa: E731
        q = split(F.silu(self.q_proj(x)), self.head_dim)
        k = split(F.silu(self.k_proj(x)), self.head_dim)
        u = self.v_proj(x)
        window = state.window if state is not None else u.new_zeros(B, self.conv_size - 1, u.shape[-1])
        v = split(self.dynamic_conv(u, self.kernels(x), window), self.v_head_dim)
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)
        g = (-self.A_log.exp() * F.softplus(self.a_proj(x) + self.dt_bias)).transpose(1, 2)
        incremental = return_state or state is not None
        kw = dict(state=state.recurrent if state is not None else None, return_state=True) if incremental else {}
        o = attention(q, k, v, "gated_deltanet", causal=True, beta=beta.to(q.dtype), g=g.to(q.dtype), **kw)
        if incremental:
            o, recurrent = o
        o = self.o_norm(o.transpose(1, 2)) * F.silu(self.g_proj(x)).unflatten(-1, (self.heads, -1))
        out = self.o_proj(o.flatten(2))
        if not return_state:
            return out
        tail = torch.cat([window, u], dim=1)[:, -(self.conv_size - 1):] if self.conv_size > 1 else window
        return out, JetBlockState(recurrent.length, tail, recurrent)


def jet_nemotron_config(*, window: int = 64, **sizes):
    """A model with Jet-Nemotron-2B's layer placement (28 layers: JetBlock, full attention in layers 15
    and 20, sliding windows of ``window`` in 21 and 22). ``sizes``: other :class:`ModelConfig` fields."""
    from .config import ModelConfig

    mixers = {"J": {"jetblock": {}}, "F": "softmax", "S": {"mechanism": "sliding_window", "window": window}}
    return ModelConfig(schedule=JET_NEMOTRON_2B, mixers=mixers, **sizes)
