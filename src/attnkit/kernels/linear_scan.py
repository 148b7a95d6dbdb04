"""Decayed linear attention in three equal forms: parallel, chunked, recurrent.

Every linear, decayed and gated mechanism of attnkit reduces to one recurrence
over a matrix state (after its own feature maps and gates):

    S_t = diag(a_t) S_{t-1} + k_t^T v_t          o_t = q_t S_t

with ``a_t = exp(g_t)`` and ``g`` the log-decay: ``None`` (no decay, plain
linear attention, Katharopoulos et al.), a scalar per token and head ``(B, H,
N)`` (RetNet, Lightning, Mamba-2's SSD) or one per key channel ``(B, H, N, Dk)``
(GLA). Unrolled: ``o_i = sum_{j<=i} (q_i * exp(G_i - G_j)) . k_j  v_j`` with
``G`` the running sum of ``g``, plus ``(q_i * exp(G_i)) S_0`` from an initial state.

- :func:`parallel` materialises that ``(N, N)`` matrix: the reference.
- :func:`chunked` is the chunkwise form of Lightning Attention-2 / GLA: inside a
  chunk the masked matrix, across chunks the state (GEMM-rich, O(N)).
- :func:`recurrent` steps token by token (decoding).

Inputs are already feature-mapped, scaled and expanded to ``H`` heads; every
form returns ``(out, S_final)``. Without causality (no decay allowed) all keys
are summed into one state that every query reads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .pieces import pieces

# Largest (chunks x C x C x Dk) block the channel-gated chunked form builds at once.
_CHANNEL_BLOCK_ELEMENTS = 1 << 24


def parallel(q, k, v, g, S0, *, causal: bool):
    """Materialised form: the ``(N, N)`` decayed score matrix, masked, times ``v``."""
    if not causal:
        return _noncausal(q, k, v, S0)
    out = parallel_weights(q, k, g, causal=True) @ v
    if g is None:
        S = k.transpose(-1, -2) @ v
        if S0 is not None:
            out, S = out + q @ S0, S + S0
        return out, S
    G = g.cumsum(dim=2)
    G_end = G[:, :, -1:]
    if g.ndim == 3:
        q_from_start, k_to_end = q * G.exp()[..., None], k * (G_end - G).exp()[..., None]
        decay_all = G_end.exp()[..., None]
    else:
        q_from_start, k_to_end = q * G.exp(), k * (G_end - G).exp()
        decay_all = G_end.transpose(-1, -2).exp()
    S = k_to_end.transpose(-1, -2) @ v
    if S0 is not None:
        out = out + q_from_start @ S0
        S = S + decay_all * S0
    return out, S


def parallel_weights(q, k, g, *, causal: bool):
    """The ``(B, H, N, N)`` matrix the parallel form multiplies ``v`` by: ``q k^T`` with the decays
    ``exp(G_i - G_j)`` (``G`` the cumulative log-decay; per key channel when ``g`` has one), zero
    above the diagonal when causal."""
    scores = q @ k.transpose(-1, -2)
    if not causal:
        return scores
    N = q.shape[2]
    future = ~torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    if g is None:
        return scores.masked_fill(future, 0.0)
    G = g.cumsum(dim=2)
    if g.ndim == 3:
        return scores * torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(future, float("-inf")))
    diff = (G[:, :, :, None, :] - G[:, :, None, :, :]).masked_fill(future[..., None], float("-inf"))
    return torch.einsum("bhic,bhjc,bhijc->bhij", q, k, diff.exp())


def recurrent(q, k, v, g, S0, *, causal: bool):
    """Token by token: ``S <- a_t S + k_t^T v_t``, ``o_t = q_t S``."""
    B, H, Nk, Dk = k.shape
    S = S0 if S0 is not None else q.new_zeros(B, H, Dk, v.shape[-1])
    outs = []
    for t in range(Nk):
        if g is not None:
            a = g[:, :, t].exp()
            S = S * (a[..., None, None] if g.ndim == 3 else a[..., None])
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        if causal:
            outs.append((q[:, :, t, None] @ S))
    if causal:
        return torch.cat(outs, dim=2), S
    return q @ S, S


# Elements of the largest per-step temporary (the chunk matrices of a stretch of one head: tokens x C):
# heads run one slice and one stretch of tokens at a time, the state handed on, so the temporaries stay
# in cache and time stays linear in N. Measured at N=8192, 2 threads: all 8 heads at once 78-84 ms,
# a head at a time 30-38 ms.
STEP_ELEMENTS = 1 << 19


def chunked(q, k, v, g, S0, *, causal: bool, chunk_size: int, features=None, feature_dim: int | None = None):
    """Chunkwise form: masked matrix inside each chunk, the state across chunks.

    ``features(q, k, v, g, start) -> (q', k', v', g', finish)``, when given, maps each slice (heads
    ``(B', 1, tokens, D)`` from token ``start`` of this call) just before its scan, and ``finish`` (or
    None) maps that slice's output: a feature map and normaliser that act on each row alone then never
    build full-size temporaries (causal only; the state's shape is then the features'). ``feature_dim``
    (the width ``features`` maps q and k to) sizes the slices.
    """
    if not causal:
        if features is not None:
            raise ValueError("features= is for the causal chunked scan")
        return _noncausal(q, k, v, S0, chunk_size)
    features = features or _as_given
    B, H, N, Dk = q.shape
    width = max(chunk_size, feature_dim or Dk)
    stretch = max(chunk_size, STEP_ELEMENTS // width // chunk_size * chunk_size)  # tokens per step
    heads = max(1, STEP_ELEMENTS // (min(N, stretch) * width))  # > 1 only when one stretch covers N
    if heads >= B * H and stretch >= N:
        return _scan_slice(features, q, k, v, g, S0, 0, chunk_size)
    flat = [None if t is None else t.reshape(B * H, 1, *t.shape[2:]) for t in (q, k, v, g, S0)]
    outs, states = [], []  # outs in the order of the output's memory: head by head, stretch by stretch
    for *part, S_h in zip(*(pieces(t, heads, 0, B * H) for t in flat)):
        for start, stretch_part in zip(range(0, N, stretch), zip(*(pieces(t, stretch, 2, N) for t in part))):
            o, S_h = _scan_slice(features, *stretch_part, S_h, start, chunk_size)  # the state passes on
            outs.append(o.reshape(1, 1, -1, o.shape[-1]))
        states.append(S_h)
    out = torch.cat(outs, dim=2)  # one output buffer, written once (nested cats cost a page-faulted copy)
    return out.reshape(B, H, N, -1), torch.cat(states).reshape(B, H, *states[0].shape[-2:])


def _as_given(q, k, v, g, start):
    return q, k, v, g, None


def _scan_slice(features, q, k, v, g, S0, start, chunk_size):
    q, k, v, g, finish = features(q, k, v, g, start)
    out, S = _chunked_heads(q, k, v, g, S0, chunk_size)
    return (out if finish is None else finish(out)), S


def _chunked_heads(q, k, v, g, S0, chunk_size: int):
    B, H, N, Dk = q.shape
    Dv, C = v.shape[-1], min(chunk_size, N)  # tokens that fit in one chunk make one chunk of their own length
    first_only = S0 is None and N <= C  # one chunk and no state before it: its own part is the whole output
    pad = (-N) % C
    if pad:  # zero keys/values/log-decays after the end change neither outputs nor the state
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g = None if g is None else F.pad(g, (0, pad) if g.ndim == 3 else (0, 0, 0, pad))
    nc = (N + pad) // C
    qc, kc, vc = (t.reshape(B, H, nc, C, t.shape[-1]) for t in (q, k, v))
    causal_block = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if g is None:
        scores = (qc @ kc.transpose(-1, -2)).tril_()
        U = kc.transpose(-1, -2) @ vc  # each chunk's contribution to the state
        if first_only:  # no q S0 product with a zero state, in the forward pass or the backward
            return (scores @ vc).reshape(B, H, N, Dv), U[:, :, 0]
        first = S0[:, :, None] if S0 is not None else torch.zeros_like(U[:, :, :1])
        starts = torch.cat([first, U[:, :, :-1]], dim=2).cumsum(dim=2)  # state before each chunk
        out = qc @ starts
        out.view(-1, C, Dv).baddbmm_(scores.view(-1, C, C), vc.reshape(-1, C, Dv))  # + the chunk's own part
        S = starts[:, :, -1] + U[:, :, -1]
    else:
        b = g.reshape(B, H, nc, C, *g.shape[3:]).cumsum(dim=3)  # log-decay from chunk start
        b_end = b[:, :, :, -1:]
        if g.ndim == 3:
            decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal_block, float("-inf")))
            intra = ((qc @ kc.transpose(-1, -2)) * decay) @ vc
            q_from_start, k_to_end = qc * b.exp()[..., None], kc * (b_end - b).exp()[..., None]
            chunk_decay = b_end.exp()[..., None]  # (B, H, nc, 1, 1)
        else:
            intra = _channel_gated_intra(qc, kc, vc, b, causal_block)
            q_from_start, k_to_end = qc * b.exp(), kc * (b_end - b).exp()
            chunk_decay = b_end.transpose(-1, -2).exp()  # (B, H, nc, Dk, 1)
        if first_only:
            return intra.reshape(B, H, N, Dv), (k_to_end.transpose(-1, -2) @ vc)[:, :, 0]
        S0 = S0 if S0 is not None else q.new_zeros(B, H, Dk, Dv)
        starts, S = pass_state(k_to_end.transpose(-1, -2) @ vc, chunk_decay, S0)
        out = intra + q_from_start @ starts
    return out.reshape(B, H, nc * C, Dv)[:, :, :N], S


def pass_state(written, decay, S):
    """The decayed state across chunks: ``S <- decay_c * S + written_c`` along dim 2.

    ``written (B, H, chunks, Dk, Dv)`` is each chunk's ``(k e^{b_end - b})^T v``, ``decay (B, H, chunks,
    Dk or 1, 1)`` its total decay. Returns the states before each chunk ``(B, H, chunks, Dk, Dv)`` and after
    the last.
    """
    starts = []
    # unbind, not written[:, :, c]: each indexing's backward would zero-fill a full-size gradient (quadratic in N)
    for written_c, decay_c in zip(written.unbind(2), decay.unbind(2)):
        starts.append(S)
        S = torch.addcmul(written_c, decay_c, S)  # one op per chunk: decay, then add
    return torch.stack(starts, dim=2), S


def _channel_gated_intra(qc, kc, vc, b, causal_block):
    """Inside each chunk: ``sum_c q_ic k_jc exp(b_ic - b_jc)`` for ``j <= i``, built exactly (no overflow)."""
    B, H, nc, C, Dk = qc.shape
    step = max(1, _CHANNEL_BLOCK_ELEMENTS // max(1, B * H * C * C * Dk))
    outs = []
    for s in range(0, nc, step):
        e = min(nc, s + step)
        bb = b[:, :, s:e]
        diff = (bb[..., :, None, :] - bb[..., None, :, :]).masked_fill(~causal_block[..., None], float("-inf"))
        scores = torch.einsum("bnic,bnjc,bnijc->bnij", qc[:, :, s:e].flatten(0, 1), kc[:, :, s:e].flatten(0, 1),
                              diff.exp().flatten(0, 1))
        outs.append(scores.reshape(B, H, e - s, C, C) @ vc[:, :, s:e])
    return torch.cat(outs, dim=2)


def _noncausal(q, k, v, S0, chunk_size: int | None = None):
    """Every query reads the sum of every key's ``k^T v`` (keys summed chunk by chunk if asked)."""
    if chunk_size is None:
        out = (q @ k.transpose(-1, -2)) @ v
        S = k.transpose(-1, -2) @ v
        if S0 is not None:
            out, S = out + q @ S0, S + S0
        return out, S
    S = S0 if S0 is not None else q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    for s in range(0, k.shape[2], chunk_size):
        S = S + k[:, :, s : s + chunk_size].transpose(-1, -2) @ v[:, :, s : s + chunk_size]
    return q @ S, S
