"""Aaren: attention as a many-to-many RNN, computed with a parallel prefix scan.

Feng et al., "Attention as an RNN" (2024). With a query token ``q`` that does not
depend on the input (learned, per head), the outputs for every prefix,
``o_t = sum_{s<=t} exp(s_s) v_s / sum_{s<=t} exp(s_s)`` with ``s_s = q . k_s``, are an
RNN over ``(m, u, w)`` = (running max, sum of ``exp(s - m)``, weighted sum of values)
whose update is associative::

    (m_a, u_a, w_a) + (m_b, u_b, w_b) = (m, u_a e^{m_a - m} + u_b e^{m_b - m}, w_a e^{m_a - m} + w_b e^{m_b - m}),
    m = max(m_a, m_b)

so a parallel prefix scan computes all outputs in ``log N`` steps and decoding keeps
constant memory. Three forms: ``prefix_attention_reference`` (materialised masked
softmax), ``prefix_attention_scan`` (Hillis-Steele scan) and ``prefix_attention_step``
(the RNN, from a state). ``AarenLayer`` is the module (a learned query per head, the
key/value projections). Its query is a parameter, not a per-position input, so Aaren
is a layer rather than an ``attnkit.attention`` mechanism over given ``q, k, v``.
"""
from __future__ import annotations

import torch
from torch import nn


def prefix_attention_reference(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scores (..., N)``, ``v (..., N, Dv)`` -> ``(..., N, Dv)``: row t is the softmax over ``s <= t``."""
    N = scores.shape[-1]
    causal = torch.ones(N, N, dtype=torch.bool, device=scores.device).tril()
    weights = torch.softmax(scores[..., None, :].expand(*scores.shape[:-1], N, N).masked_fill(~causal, float("-inf")), -1)
    return weights @ v


def _combine(a, b):
    m = torch.maximum(a[0], b[0])
    ea, eb = (a[0] - m).exp(), (b[0] - m).exp()
    return m, a[1] * ea + b[1] * eb, a[2] * ea[..., None] + b[2] * eb[..., None]


def prefix_attention_scan(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hillis-Steele inclusive scan of ``(m, u, w)``: ``ceil(log2 N)`` combine steps over all positions."""
    m, u, w = scores, torch.ones_like(scores), v
    offset = 1
    while offset < scores.shape[-1]:
        earlier = (m[..., :-offset], u[..., :-offset], w[..., :-offset, :])
        later = (m[..., offset:], u[..., offset:], w[..., offset:, :])
        cm, cu, cw = _combine(earlier, later)
        m = torch.cat([m[..., :offset], cm], dim=-1)
        u = torch.cat([u[..., :offset], cu], dim=-1)
        w = torch.cat([w[..., :offset, :], cw], dim=-2)
        offset *= 2
    return w / u[..., None]


def prefix_attention_step(scores: torch.Tensor, v: torch.Tensor, state: tuple | None):
    """The RNN: fold tokens one at a time into ``(m, u, w)``; returns ``(outputs, state)``."""
    outs = []
    for t in range(scores.shape[-1]):
        token = (scores[..., t], torch.ones_like(scores[..., t]), v[..., t, :])
        state = token if state is None else _combine(state, token)
        outs.append(state[2] / state[1][..., None])
    return torch.stack(outs, dim=-2), state


class AarenLayer(nn.Module):
    """``x (B, N, dim) -> (B, N, dim)``: per head, a learned query attends over every prefix."""

    FORMS = ("reference", "scan")

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / self.head_dim**0.5)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, state=None, return_state: bool = False, form: str = "scan"):
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {self.FORMS}, got {form!r}")
        B, N, _ = x.shape
        k, v = self.to_kv(x).view(B, N, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, D) each
        scores = torch.einsum("hd,bhnd->bhn", self.query, k) / self.head_dim**0.5
        if return_state or state is not None:
            o, state = prefix_attention_step(scores, v, state)
        elif form == "scan":
            o = prefix_attention_scan(scores, v)
        else:
            o = prefix_attention_reference(scores, v)
        y = self.out(o.transpose(1, 2).reshape(B, N, -1))
        return (y, state) if return_state else y
