"""Ulysses: all-to-all from sequence-sharded to head-sharded, attention, and back.

After Jacobs et al., "DeepSpeed Ulysses: System Optimizations for Enabling
Training of Extreme Long Sequence Transformer Models": each of ``P`` ranks holds
``N / P`` tokens of every head; one all-to-all gives it all ``N`` tokens of
``H / P`` heads, it runs ordinary (single-process) attention on them, and a
second all-to-all returns the output to the sequence sharding. Communication
per rank is ``O(N H D / P)`` per all-to-all, independent of the mechanism, so
any registered mechanism runs this way (with its masks and parameters, which
see the whole sequence in natural order).

Heads must divide by ``P``. With grouped K/V heads (GQA), K/V are sharded by
their own heads when ``Hkv`` divides by ``P`` (query head ``h`` of rank ``r``
still meets its own K/V head); when ``P`` divides by ``Hkv`` each K/V head is
repeated ``P / Hkv`` times first, so every rank receives the one it needs.
"""
from __future__ import annotations

import torch

from .. import api
from ..validation import check_qkv
from .comm import Group
from .layout import LAYOUTS, Layout, permute, unpermute


def ulysses_attention(q, k, v, mechanism: str = "softmax", *, group=None, layout: str = "contiguous",
                      causal: bool = False, **kwargs) -> torch.Tensor:
    """``attnkit.attention(q, k, v, mechanism, ...)`` over a sequence sharded across ``group``.

    Args:
        q, k, v: this rank's shard ``(B, H, N / P, D)`` / ``(B, Hkv, N / P, .)`` in ``layout`` order.
        mechanism, causal, **kwargs: as :func:`attnkit.attention` on the whole sequence (``mask``,
            ``scale``, ``position``, the mechanism's parameters and per-token inputs such as
            ``doc_ids (B or 1, N)`` describe the whole sequence in natural order).
    Returns:
        this rank's output shard ``(B, H, N / P, Dv)``.
    """
    g = Group(group, "ulysses_attention")
    check_qkv(q, k, v)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"ulysses_attention shards one sequence: q has {q.shape[2]} local tokens but k has "
                         f"{k.shape[2]}")
    B, H, n, D = q.shape
    Hkv = k.shape[1]
    if H % g.size:
        raise ValueError(f"ulysses_attention shards heads: {H} query heads do not divide by the world size "
                         f"{g.size}; use ring_attention or a world size dividing {H}")
    if H % Hkv:
        raise ValueError(f"q has {H} heads, not a multiple of k's {Hkv} (GQA groups)")
    if Hkv % g.size and g.size % Hkv:
        raise ValueError(f"ulysses_attention: {Hkv} K/V heads neither divide by the world size {g.size} nor "
                         f"divide it; GQA needs one of the two")
    g.agree([B, H, Hkv, n, D, v.shape[-1], LAYOUTS.index(layout)],
            ["batch", "heads", "kv heads", "local sequence length", "head_dim", "value head_dim", "layout"], q.device)
    lay = Layout(layout, g.size, n * g.size)
    if Hkv % g.size:
        k, v = (t.repeat_interleave(g.size // Hkv, dim=1) for t in (k, v))
    qh, kh, vh = (unpermute(_AllToAll.apply(t, g, True), lay, 2) for t in (q, k, v))
    out = api.attention(qh, kh, vh, mechanism, causal=causal, **kwargs)
    return _AllToAll.apply(permute(out, lay, 2).contiguous(), g, False)


def seq_to_heads(x: torch.Tensor, g: Group) -> torch.Tensor:
    """``(B, H, n, D)`` sequence shard -> ``(B, H / P, P n, D)``: my heads, every rank's shard in rank order."""
    B, H, n, D = x.shape
    send = x.reshape(B, g.size, H // g.size, n, D).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    g.all_to_all(recv, send, "all-to-all from sequence to head sharding")
    return recv.permute(1, 2, 0, 3, 4).reshape(B, H // g.size, g.size * n, D)


def heads_to_seq(x: torch.Tensor, g: Group) -> torch.Tensor:
    """``(B, H / P, P n, D)`` -> ``(B, H, n, D)``: the inverse of :func:`seq_to_heads`."""
    B, h, N, D = x.shape
    send = x.reshape(B, h, g.size, N // g.size, D).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    g.all_to_all(recv, send, "all-to-all from head to sequence sharding")
    return recv.transpose(0, 1).reshape(B, g.size * h, N // g.size, D)


class _AllToAll(torch.autograd.Function):
    """:func:`seq_to_heads` (``to_heads``) or :func:`heads_to_seq`; the backward is the other one."""

    @staticmethod
    def forward(ctx, x, g, to_heads: bool):
        ctx.g, ctx.to_heads = g, to_heads
        return seq_to_heads(x, g) if to_heads else heads_to_seq(x, g)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        return (heads_to_seq(grad, ctx.g) if ctx.to_heads else seq_to_heads(grad, ctx.g)), None, None
