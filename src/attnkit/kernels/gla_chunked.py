"""GLA's two-level chunkwise form: chunks carry the state, sub-chunks turn most of a chunk into matmuls.

Shared by the recurrences whose state decays per key channel: ``gla`` and ``hgrn2``.

Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient
Training" (2024), section 4 ("secondary-level chunking"). The recurrence

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,   o_t = q_t S_t

unrolls to ``o_t = sum_{s<=t} sum_d q_td k_sd exp(b_td - b_sd) v_s`` (+ the
state before the chunk) with ``b`` the running sum of the per-channel log
gates ``g``. With chunks of ``C`` tokens split into sub-chunks of ``c``:

- **across chunks**: the state, as in the one-level chunkwise form
  (``q exp(b)`` reads it, ``k exp(b_end - b)`` writes it; one update per chunk);
- **across sub-chunks of a chunk** (``s`` in an earlier sub-chunk than ``t``):
  ``exp(b_t - b_s) = exp(b_t - B_i) exp(B_i - b_s)`` with ``B_i`` the running
  sum just before sub-chunk ``i`` (the query's). Both factors have a
  non-positive exponent, so this is safe in any precision ("log-space" in the
  paper), and the block is one matmul ``(q exp(b - B_i)) (k exp(B_i - b))^T``;
- **inside a sub-chunk**: the exact ``(c, c, Dk)`` tensor of
  ``exp(b_t - b_s)``, masked before ``exp`` (no factor exceeds 1).

Inputs are already scaled and expanded to ``H`` heads; causal only.
Returns ``(out, S_final)`` like :mod:`attnkit.kernels.linear_scan`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .linear_scan import pass_state
from ..validation import check_int


# Sub-chunk length: the exact per-channel (c, c, Dk) tensor costs c Dk per token and the
# earlier-sub-chunk factors C / 2c Dk, so on CPU short sub-chunks win (GPUs use 16).
SUB_CHUNK = 4
# Largest per-channel (chunks x C x c x Dk) temporary built at once.
_BLOCK_ELEMENTS = 1 << 22


def gla_chunked(q, k, v, g, S0, *, causal: bool, chunk_size: int, sub_chunk_size: int | None = None):
    """Two-level chunkwise GLA over ``q, k (B, H, N, Dk)``, ``v (B, H, N, Dv)``, ``g (B, H, N, Dk)``.

    Sub-chunks are ``sub_chunk_size`` tokens (default ``gcd(chunk_size, SUB_CHUNK)``),
    which must divide ``chunk_size``.
    """
    if not causal:
        raise ValueError("GLA's gated recurrence is only defined causally; pass causal=True")
    check_int("chunk_size", chunk_size)
    if sub_chunk_size is None:
        sub_chunk_size = math.gcd(chunk_size, SUB_CHUNK)
    check_int("sub_chunk_size", sub_chunk_size)
    if chunk_size % sub_chunk_size:
        raise ValueError(
            f"sub_chunk_size must be a positive int dividing chunk_size={chunk_size}, got {sub_chunk_size!r}"
        )
    B, H, N, Dk = q.shape
    Dv, C, c = v.shape[-1], chunk_size, sub_chunk_size
    pad = (-N) % C
    if pad:  # zero keys/values/log-gates after the end change neither outputs nor the state
        q, k, v, g = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, g))
    nc = (N + pad) // C
    S = S0 if S0 is not None else q.new_zeros(B, H, Dk, Dv)
    # a block of chunks at a time, so every temporary stays small (and time linear in N)
    step = max(1, _BLOCK_ELEMENTS // (B * H * C * c * Dk))
    outs = []
    for qc, kc, vc, gc in zip(*(t.reshape(B, H, nc, C, t.shape[-1]).split(step, dim=2) for t in (q, k, v, g))):
        out, S = _block(qc, kc, vc, gc.cumsum(dim=3), S, c)
        outs.append(out)
    return torch.cat(outs, dim=2).reshape(B, H, nc * C, Dv)[:, :, :N], S


def _block(qc, kc, vc, b, S, c):
    """Outputs of a block of chunks ``(B, H, chunks, C, .)`` given the state before it, and the state after.

    ``b`` is the log-decay from each chunk's start (inclusive)."""
    b_end = b[:, :, :, -1:]
    # across chunks: the state before each chunk, one update per chunk
    written = (kc * (b_end - b).exp()).transpose(-1, -2) @ vc
    starts, S = pass_state(written, b_end.transpose(-1, -2).exp(), S)
    out = (qc * b.exp()) @ starts
    # inside each chunk: scores for earlier sub-chunks by matmul, the diagonal sub-chunks exactly
    return out + _earlier_sub_chunks(qc, kc, vc, b, c) + _diagonal_sub_chunks(qc, kc, vc, b, c), S


def _earlier_sub_chunks(qc, kc, vc, b, c):
    """``o_t += sum_{s in earlier sub-chunks of t's chunk} (q_t exp(b_t - B_i)) . (k_s exp(B_i - b_s)) v_s``.

    Pieces come from ``split`` and ``cat`` (not slices of the whole chunk, whose backward
    zero-fills a chunk-sized gradient per slice)."""
    qs, ks, vs, bs = (t.split(c, dim=3) for t in (qc, kc, vc, b))
    outs = [torch.zeros_like(vs[0])]  # the first sub-chunk has no earlier one
    for i in range(1, len(qs)):
        before = bs[i - 1][:, :, :, -1:]  # B_i: the running sum just before sub-chunk i
        q_hat = qs[i] * (bs[i] - before).exp_()
        k_hat = torch.cat(ks[:i], dim=3) * (before - torch.cat(bs[:i], dim=3)).exp_()
        outs.append((q_hat @ k_hat.transpose(-1, -2)) @ torch.cat(vs[:i], dim=3))
    return torch.cat(outs, dim=3)


def _diagonal_sub_chunks(qc, kc, vc, b, c):
    """``o_t += sum_{s <= t in t's sub-chunk} sum_d q_td k_sd exp(b_td - b_sd) v_s``, built exactly."""
    B, H, nc, C, Dk = qc.shape
    n = B * H * nc * (C // c)
    qs, ks, bs = (t.reshape(n, c, Dk) for t in (qc, kc, b))
    future = ~torch.ones(c, c, dtype=torch.bool, device=qc.device).tril()
    weights = (bs[:, :, None] - bs[:, None]).masked_fill_(future[..., None], float("-inf")).exp_()  # (n, c, c, Dk)
    scores = torch.einsum("ntsd,ntsd->nts", qs[:, :, None] * ks[:, None], weights)
    return (scores @ vc.reshape(n, c, -1)).reshape(qc.shape[:-1] + (-1,))
