"""Mega: moving-average equipped gated attention.

Ma et al., "Mega: Moving Average Equipped Gated Attention" (ICLR 2023). A layer,
not a mechanism over given ``q, k, v``: queries and keys are computed from the
output of a multi-dimensional damped exponential moving average of the input,
then a single-head attention (``attnkit.attention``) is gated::

    u_t = beta x_t  (each of d channels expanded to n dims)
    h_t = alpha * u_t + (1 - alpha * delta) * h_{t-1},   x'_t = eta . h_t      (damped EMA)
    Z = silu(X' W_z),  Q = kappa_q Z + mu_q,  K = kappa_k Z + mu_k,  V = silu(X W_v)
    O = f(Q K^T / sqrt(z) + b_rel) V      (the registered ``mega`` mechanism: f = softmax, laplace or relu^2)
    gamma = silu(X' W_g),  phi = sigmoid(X' W_f),  H = silu(X' W_h + (gamma * O) U_h)
    Y = phi * H + (1 - phi) * X

The EMA has three equal forms: ``ema_kernel`` materialises its causal convolution
kernel (``(alpha beta eta) (1 - alpha delta)^t``) for the ``N x N`` reference, the
FFT form convolves in O(N log N), and ``ema_step`` runs the recurrence (decoding).
The attention is ``attnkit.attention(..., "mega")`` (:mod:`attnkit.families.mega`):
``attention_fn`` picks softmax (scale ``z^-1/2``) or laplace / relu^2 (``Q K^T / n``,
as Mega), ``chunk_size`` gives Mega-chunk, and the layer learns Mega's simple
relative position bias ``b_rel`` (one scalar per offset, ``max_positions`` or
``chunk_size`` of them each way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import attention


class DampedEMA(nn.Module):
    """Multi-dimensional damped EMA over ``(B, N, d)`` sequences, ``n`` hidden dims per channel."""

    def __init__(self, dim: int, ndim: int = 2):
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(dim, ndim) * 0.2)  # sigmoid -> (0, 1)
        self.delta = nn.Parameter(torch.randn(dim, ndim) * 0.2)
        self.beta = nn.Parameter(torch.randn(dim, ndim) * 0.02 + 1.0)
        self.eta = nn.Parameter(torch.randn(dim, ndim) / ndim**0.5)

    def _coefficients(self):
        alpha, delta = torch.sigmoid(self.alpha), torch.sigmoid(self.delta)
        return alpha * self.beta, 1 - alpha * delta, self.eta  # input weight, decay, read-out

    def ema_kernel(self, n: int) -> torch.Tensor:
        """``k[c, t] = sum_n eta alpha beta (1 - alpha delta)^t``: the EMA as a causal convolution."""
        w, decay, eta = self._coefficients()
        t = torch.arange(n, dtype=w.dtype, device=w.device)
        return ((eta * w)[..., None] * decay[..., None] ** t).sum(1)  # (d, N)

    def forward(self, x: torch.Tensor, form: str = "fft") -> torch.Tensor:
        """``x (B, N, d) -> (B, N, d)``; ``form`` is ``"reference"`` (materialised Toeplitz) or ``"fft"``."""
        N = x.shape[1]
        kern = self.ema_kernel(N).to(x.dtype)
        if form == "reference":
            lags = torch.arange(N)[:, None] - torch.arange(N)[None, :]
            toeplitz = torch.where(lags >= 0, kern[:, lags.clamp(min=0)], torch.zeros((), dtype=x.dtype))  # (d, N, N)
            return torch.einsum("dts,bsd->btd", toeplitz, x)
        if form != "fft":
            raise ValueError(f"form must be 'reference' or 'fft', got {form!r}")
        size = 2 * N
        spec = torch.fft.rfft(x.transpose(1, 2), n=size) * torch.fft.rfft(kern, n=size)
        return torch.fft.irfft(spec, n=size)[..., :N].transpose(1, 2)

    def ema_step(self, x: torch.Tensor, h: torch.Tensor | None):
        """Run the recurrence over ``x (B, N, d)`` from hidden state ``h (B, d, n)``; returns ``(y, h)``."""
        w, decay, eta = self._coefficients()
        h = x.new_zeros(x.shape[0], *w.shape) if h is None else h
        outs = []
        for t in range(x.shape[1]):
            h = w * x[:, t, :, None] + decay * h
            outs.append((eta * h).sum(-1))
        return torch.stack(outs, dim=1), h


class MegaLayer(nn.Module):
    """Single-head gated attention over an EMA of its input; ``forward(x, state=None)`` decodes incrementally."""

    def __init__(self, dim: int, z_dim: int = 64, v_dim: int | None = None, ema_dim: int = 2, causal: bool = True,
                 attention_fn: str = "softmax", chunk_size: int | None = None, max_positions: int = 1024):
        super().__init__()
        v_dim = v_dim or 2 * dim
        self.causal = causal
        self.attention = {"attention_fn": attention_fn, "chunk_size": chunk_size,
                          "scale": None if attention_fn == "softmax" else 1.0}
        span = chunk_size if chunk_size is not None else max_positions
        self.rel_bias = nn.Parameter(torch.randn(2 * span - 1) * 0.02)
        self.ema = DampedEMA(dim, ema_dim)
        self.to_z = nn.Linear(dim, z_dim)
        self.qk_scale = nn.Parameter(torch.randn(2, z_dim) * 0.02 + 1.0)
        self.qk_shift = nn.Parameter(torch.zeros(2, z_dim))
        self.to_v = nn.Linear(dim, v_dim)
        self.gates = nn.Linear(dim, v_dim + dim)  # reset gate gamma (v_dim), update gate phi (dim)
        self.to_h = nn.Linear(dim, dim)
        self.out_h = nn.Linear(v_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, state: dict | None = None, return_state: bool = False, ema_form: str = "fft"):
        """``x (B, N, dim)``. With ``state``/``return_state`` (causal only) the EMA runs as a recurrence
        and attention keeps a KV cache, so feeding pieces equals one call."""
        incremental = return_state or state is not None
        if incremental and not self.causal:
            raise ValueError("incremental use (state / return_state) needs a causal MegaLayer")
        if incremental:
            x_ema, h = self.ema.ema_step(x, None if state is None else state["ema"])
        else:
            x_ema = self.ema(x, form=ema_form)
        z = F.silu(self.to_z(x_ema))
        q = (z * self.qk_scale[0] + self.qk_shift[0])[:, None]  # one head: (B, 1, N, z)
        k = (z * self.qk_scale[1] + self.qk_shift[1])[:, None]
        v = F.silu(self.to_v(x))[:, None]
        if incremental:
            o, cache = attention(q, k, v, "mega", causal=True, state=None if state is None else state["kv"],
                                         return_state=True, rel_bias=self.rel_bias.to(q.dtype), **self.attention)
        else:
            o = attention(q, k, v, "mega", causal=self.causal, rel_bias=self.rel_bias.to(q.dtype),
                                  **self.attention)
        o = o[:, 0]
        gamma, phi = self.gates(x_ema).split([o.shape[-1], x.shape[-1]], dim=-1)
        hidden = F.silu(self.to_h(x_ema) + self.out_h(F.silu(gamma) * o))
        phi = torch.sigmoid(phi)
        y = phi * hidden + (1 - phi) * x
        return (y, {"ema": h, "kv": cache}) if return_state else y
