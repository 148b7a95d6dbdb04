"""SPARSEK attention (Lou, Jia, Zheng and Tu, "Sparser is Faster and Less is More: Efficient Sparse Attention
for Long-Range Transformers", 2024).

A scoring network rates every KV pair once, independently of the queries, and
the differentiable SPARSEK operator turns the scores a query can see into a
soft mask; the query attends to the ``k`` best-scored keys under it, weighted
by their mask, and to a sliding window::

    u_j = x_j w_score                                   (one score per key and kv head)
    SPARSEK(z, k) = argmin_{p in C} ||p - z||^2,   C = {p : 0 <= p <= 1, 1^T p = k}
                  = clip(z - tau(z), 0, 1)            (tau: the threshold making the sum k)
    m_t = SPARSEK(u_{<= t - w}, k)                    (over the keys before the query's window)
    S_t = the k keys before the window with the largest u (all of them when there are at most k)
    o_t = sum_{j in A_t} softmax_{A_t}(scale q_t . k_j) m_tj v_j,
          A_t = S_t + the window {t - w < j <= t}, where m_tj = 1

With ``k`` or fewer keys before the window every one gets ``m = 1``. ``S_t``
lies inside the mask's support (the support holds at least ``k`` keys, the
largest ones). The threshold ``tau`` of a prefix never decreases as the prefix
grows, and the top-k of a growing set never takes back a key it dropped, so a
key that leaves ``S_t`` (or the support) stays out for every later query.

What was checked, and against what: the paper's method section and the
authors' code were not available here; the abstract and published summaries
were. They fix the operator (the projection onto the capped simplex, solved by
a threshold from the sorted scores: the entries at 1, the free entries
``z - tau``, ``tau = (sum of the free z + #ones - k) / #free``, which is what
both ``tau`` searches below compute) and that the method "selects a constant
number of KV pairs for each query" with a constant-memory decode. The keys
with ``m > 0`` are not a constant number (more of them when scores are
close), hence the hard cut to the top ``k`` keys ``S_t``, as the abstract says
and a public re-implementation of the paper does (``TOPK(u) * SPARSEK(u)``).
Still unverified readings, also printed by
``attnkit info sparsek``: ``scores (B, Hkv, N)`` are ``u`` given already
computed (inside ``attnkit.nn.Attention(..., mechanism="sparsek")``,
:class:`attnkit.nn.inputs.sparsek.SparseKScores` learns ``w_score`` as a linear
map of the layer input per kv head, without the increasing position term a
summary of the paper adds to ``u``); the mask *weights the values* of the
selected pairs after the softmax (so the scoring network gets gradients through
``m``; the softmax itself runs over ``A_t`` unweighted; re-implementations
differ here, some scale the keys too); SPARSEK chooses among the keys before
the window, the window keys always get weight 1. ``tau``'s derivative is the
projection's: only the keys strictly between 0 and 1 move it.

Forms: ``reference`` (``tau`` of every query by scanning all ``2n`` breakpoints
of the piecewise-linear ``sum_i clip(z_i - tau, 0, 1)``, the mask materialised)
and ``chunked`` (queries in chunks; a chunk's candidates are the keys still in
the support of the previous chunk's mask plus the keys entering its prefix,
``tau`` from the sorted candidates and their prefix sums, the top ``k`` of them
and the window attended): ``O(N (k + C) (D + log))`` time when the supports
stay near ``k`` keys. Decode (:class:`SparseKCache`) holds only what a later
query can still read: the last query's window and the keys before it still in
its SPARSEK support, with their values and scores; every other key is dropped
for good. That is the paper's constant-memory generation when the support stays
near ``k`` keys, as it does when the scores rise with the position (the
position term of the paper's scoring network) or are spread like a standard
normal; with scores that do not spread (all equal) the support, and the state,
grows with the prefix (``state_size`` counts it from the scores).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..builders.key_scores import check_key_scores, key_score_inputs
from ..kernels.positions import query_positions, repeat_kv
from ..params import Param, TensorInput
from ..reference import materialised_weights
from ..registry import MechanismSpec, register

PAPER = "Sparser is Faster and Less is More: Efficient Sparse Attention for Long-Range Transformers"


def _projection(z, valid, k: int, tau):
    """``clip(z - tau, 0, 1)`` on the valid entries, with ``tau`` recomputed from its own free entries so that
    its gradient is the projection's (``tau`` given without gradient only picks which entries are free, at 1
    or at 0). Rows with at most ``k`` valid entries are all ones."""
    zd = z.detach()
    ones = valid & (zd - 1 > tau)  # the sets on the linear piece just above the breakpoint ``tau``
    free = valid & (zd > tau) & ~ones
    n_free = free.sum(-1, keepdim=True)
    exact = ((z * free).sum(-1, keepdim=True) - (k - ones.sum(-1, keepdim=True))) / n_free.clamp(min=1)
    tau = torch.where(n_free > 0, exact, tau)
    p = torch.where(ones, torch.ones_like(z), torch.where(free, z - tau, torch.zeros_like(z)))
    few = valid.sum(-1, keepdim=True) <= k
    return torch.where(few, valid.to(z.dtype), p)


def _mass(z, valid, tau):
    """``sum_i clip(z_i - tau, 0, 1)`` over the valid entries, for each threshold in ``tau (..., m)``."""
    return ((z[..., None, :] - tau[..., :, None]).clamp(0, 1) * valid[..., None, :]).sum(-1)


def sparsek_by_breakpoints(z, valid, k: int):
    """SPARSEK of each row of ``z`` over its ``valid`` entries, ``tau`` found by evaluating the mass at every
    breakpoint ``z_i`` and ``z_i - 1`` (``O(n^2)`` per row: the reference)."""
    if z.shape[-1] == 0:
        return z.clone()
    zd = z.detach()
    points = torch.cat([zd, zd - 1], dim=-1).masked_fill(~torch.cat([valid, valid], dim=-1), float("-inf"))
    mass = _mass(zd, valid, points)
    # the largest breakpoint whose mass is still >= k: tau lies in the linear piece just above it
    tau = points.masked_fill(mass < k, float("-inf")).amax(-1, keepdim=True)
    return _projection(z, valid, k, tau)


def sparsek_by_sorting(z, valid, k: int):
    """The same operator, ``tau`` from the sorted entries and their prefix sums (``O(n log n)`` per row)."""
    if z.shape[-1] == 0:
        return z.clone()
    zd = z.detach().masked_fill(~valid, float("-inf"))
    ordered = zd.sort(dim=-1).values  # ascending, invalid first
    finite = torch.where(torch.isfinite(ordered), ordered, torch.zeros_like(ordered))
    below = torch.cat([torch.zeros_like(finite[..., :1]), finite.cumsum(-1)], dim=-1)  # sum of the i smallest
    total = below[..., -1:]
    n = zd.shape[-1]
    points = torch.cat([ordered, ordered - 1], dim=-1)

    def mass(tau):
        above = n - torch.searchsorted(ordered, tau, right=True)  # entries > tau
        at_one = n - torch.searchsorted(ordered, tau + 1, side="left")  # entries >= tau + 1
        s_above = total - below.gather(-1, n - above)
        s_one = total - below.gather(-1, n - at_one)
        return at_one + (s_above - s_one) - (above - at_one) * tau

    points = points.masked_fill(~torch.isfinite(points), float("-inf"))
    safe = torch.where(torch.isfinite(points), points, torch.zeros_like(points))
    m = torch.where(torch.isfinite(points), mass(safe.contiguous()), torch.zeros_like(points))
    tau = points.masked_fill(m < k, float("-inf")).amax(-1, keepdim=True)
    return _projection(z, valid, k, tau)


def top_entries(z, valid, k: int):
    """The ``k`` largest valid entries of each row of ``z`` (ties to the earlier entry), boolean like ``z``."""
    order = z.detach().masked_fill(~valid, float("-inf")).sort(dim=-1, descending=True, stable=True).indices
    return torch.zeros_like(valid).scatter(-1, order[..., :k], True) & valid


def sparsek_mask(scores, q_len: int, *, select_count: int, window: int) -> torch.Tensor:
    """``(B, Hkv, q_len, Nk)``: ``m_t`` of every query, 1 on its window, SPARSEK over the keys before it, kept on
    their top ``select_count`` scores."""
    Nk = scores.shape[-1]
    qpos = query_positions(q_len, Nk, scores.device)[:, None]
    j = torch.arange(Nk, device=scores.device)
    before = j <= qpos - window
    in_window = (j <= qpos) & ~before
    z = scores[:, :, None, :].expand(*scores.shape[:2], q_len, Nk)
    m = sparsek_by_breakpoints(z, before.expand_as(z), select_count)
    m = torch.where(top_entries(z, before.expand_as(z), select_count), m, torch.zeros_like(m))
    return torch.where(in_window, torch.ones_like(m), m)


def _reference(q, k, v, *, causal, mask, scale, select_count, window, scores):
    return _weights(q, k, v, causal=causal, mask=mask, scale=scale, select_count=select_count, window=window,
                    scores=scores) @ repeat_kv(v, q.shape[1])


def _weights(q, k, v, *, causal, mask, scale, select_count, window, scores):
    """Softmax over the attended keys times their mask values (so ``weights @ v`` is the output)."""
    check_key_scores("scores", q, k, scores)
    H = q.shape[1]
    m = repeat_kv(sparsek_mask(scores, q.shape[2], select_count=select_count, window=window), H)
    return materialised_weights(q, k, causal=False, mask=m > 0, scale=scale) * m


def _chunk_attention(qc, kc, vc, weight, scale):
    """A chunk's queries ``(B, Hkv, g, C, D)`` over its keys ``(B, Hkv, S, D)``; ``weight (B, Hkv, C, S)`` the
    mask values (0: not attended)."""
    s = (qc @ kc[:, :, None].transpose(-1, -2)) * scale
    s = s.masked_fill(weight[:, :, None] <= 0, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p * weight[:, :, None]) @ vc[:, :, None]


def _compact(positions, kept):
    """The kept positions of each row first (in order), padded to the longest row: ``(positions, valid)``."""
    order = kept.to(torch.int8).sort(dim=-1, descending=True, stable=True).indices[..., : int(kept.sum(-1).max())]
    return positions.gather(-1, order), kept.gather(-1, order)


def _chunked(q, k, v, *, causal, mask, scale, select_count, window, scores, chunk: int = 64):
    check_key_scores("scores", q, k, scores)
    B, H, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    g, start = H // Hkv, Nk - Nq
    dev = q.device
    # the keys in the mask of the query before the first one: SPARSEK over all keys before its window
    held = torch.arange(max(start - window, 0), device=dev).expand(B, Hkv, -1)
    held_valid = torch.ones_like(held, dtype=torch.bool)
    if held.shape[-1]:
        m = sparsek_by_sorting(scores.detach()[:, :, None, : held.shape[-1]], held_valid[:, :, None], select_count)
        held, held_valid = _compact(held, m[:, :, 0] > 0)
    outs = []
    for p0 in range(start, Nk, chunk):
        p1 = min(Nk, p0 + chunk)
        entering = torch.arange(max(p0 - window, 0), max(p1 - window, 0), device=dev).expand(B, Hkv, -1)
        cand = torch.cat([held, entering], dim=-1)
        valid = torch.cat([held_valid, torch.ones_like(entering, dtype=torch.bool)], dim=-1)
        qpos = torch.arange(p0, p1, device=dev)
        z = scores.gather(2, cand)[:, :, None, :].expand(B, Hkv, p1 - p0, cand.shape[-1])
        before = valid[:, :, None, :] & (cand[:, :, None, :] <= (qpos - window)[:, None])
        m = sparsek_by_sorting(z, before, select_count)  # (B, Hkv, C, S): the support decides the next candidates
        kept = torch.where(top_entries(z, before, select_count), m, torch.zeros_like(m))
        win = torch.arange(max(p0 - window + 1, 0), p1, device=dev)
        in_window = (win <= qpos[:, None]) & (win > qpos[:, None] - window)  # (C, W)
        keys = torch.cat([cand, win.expand(B, Hkv, -1)], dim=-1)
        weight = torch.cat([kept, in_window.to(m.dtype).expand(B, Hkv, -1, -1)], dim=-1)
        qc = q[:, :, p0 - start : p1 - start].reshape(B, Hkv, g, p1 - p0, D)
        kc = k.gather(2, keys[..., None].expand(-1, -1, -1, D))
        vc = v.gather(2, keys[..., None].expand(-1, -1, -1, Dv))
        args = (qc, kc, vc, weight, scale)
        out = checkpoint(_chunk_attention, *args, use_reentrant=False) if torch.is_grad_enabled() else \
            _chunk_attention(*args)
        outs.append(out.reshape(B, H, p1 - p0, Dv))
        held, held_valid = _compact(cand, m[:, :, -1].detach() > 0)
    return torch.cat(outs, dim=2) if outs else q.new_zeros(B, H, 0, Dv)


class SparseKCache:
    """What SPARSEK decoding holds: the keys a later query can still attend (the last query's window and the
    keys before it still in its SPARSEK support), with their values, scores and positions, after ``length``
    tokens. Rows (batch, kv head) hold different keys: ``(B, Hkv, L)`` padded, ``valid`` marks the real ones.
    A value: a later call never changes it."""

    def __init__(self, positions, valid, k, v, scores, length: int):
        self.positions, self.valid, self.k, self.v, self.scores, self.length = positions, valid, k, v, scores, length

    def numel(self) -> int:
        """Numbers held: keys, values and scores (the positions and flags are bookkeeping)."""
        return self.k.numel() + self.v.numel() + self.scores.numel()


def _advance(q, k, v, held, *, scale, select_count, window, scores):
    """Queries ``q`` of the new tokens ``k, v, scores`` after ``held``: their outputs and the new cache."""
    B, H, c, D = q.shape
    Hkv, Dv, n0 = k.shape[1], v.shape[3], held.length
    qpos = torch.arange(n0, n0 + c, device=q.device)
    pos = torch.cat([held.positions, qpos.expand(B, Hkv, c)], dim=-1)
    valid = torch.cat([held.valid, torch.ones(B, Hkv, c, dtype=torch.bool, device=q.device)], dim=-1)
    keys, values = torch.cat([held.k, k], dim=2), torch.cat([held.v, v], dim=2)
    u = torch.cat([held.scores, scores], dim=-1)
    at = pos[:, :, None, :]
    before = valid[:, :, None, :] & (at <= (qpos - window)[:, None])  # (B, Hkv, c, L)
    in_window = valid[:, :, None, :] & ~before & (at <= qpos[:, None])
    z = u[:, :, None, :].expand_as(before)
    m = sparsek_by_sorting(z, before, select_count)
    weight = torch.where(in_window, torch.ones_like(m),
                         torch.where(top_entries(z, before, select_count), m, torch.zeros_like(m)))
    out = _chunk_attention(q.reshape(B, Hkv, H // Hkv, c, D), keys, values, weight, scale).reshape(B, H, c, Dv)
    live = valid & ~(before[:, :, -1] & (m[:, :, -1].detach() <= 0))  # a key out of the support never returns
    order = live.to(torch.int8).sort(dim=-1, descending=True, stable=True).indices[..., : int(live.sum(-1).max())]
    kept = SparseKCache(pos.gather(-1, order), live.gather(-1, order),
                        keys.gather(2, order[..., None].expand(-1, -1, -1, D)),
                        values.gather(2, order[..., None].expand(-1, -1, -1, Dv)), u.gather(-1, order), n0 + c)
    return out, kept


def _step(q, k, v, state, *, causal, mask, scale, select_count, window, scores, chunk: int = 64):
    """Decode holding only :class:`SparseKCache`: the new tokens in pieces of ``chunk``."""
    check_key_scores("scores", q, k, scores)
    B, Hkv = k.shape[0], k.shape[1]
    if state is None:
        state = SparseKCache(torch.zeros(B, Hkv, 0, dtype=torch.long, device=k.device),
                             torch.zeros(B, Hkv, 0, dtype=torch.bool, device=k.device), k[:, :, :0], v[:, :, :0],
                             scores[:, :, :0], 0)
    elif not isinstance(state, SparseKCache) or state.k.shape[:2] != k.shape[:2] or state.k.shape[3] != k.shape[3]:
        raise ValueError(f"state must be a sparsek state of batch {B}, {Hkv} kv heads and head_dim {k.shape[3]}")
    outs = []
    for a in range(0, q.shape[2], chunk):
        b = min(a + chunk, q.shape[2])
        out, state = _advance(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], state, scale=scale,
                              select_count=select_count, window=window, scores=scores[:, :, a:b])
        outs.append(out)
    return torch.cat(outs, dim=2), state


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, select_count=64, window=512, scores=None,
                **_):
    """Numbers a decoder holds after ``seq_len`` tokens: keys, values and scores of the window and of the last
    query's support, padded to the fullest (batch, kv head) row; without ``scores``, the bound (every key)."""
    per_key = head_dim + (v_dim or head_dim) + 1
    if scores is None:
        return batch * kv_heads * seq_len * per_key
    prefix = scores[:, :, : max(seq_len - window, 0)].detach()
    support = (sparsek_by_sorting(prefix[:, :, None], torch.ones_like(prefix[:, :, None], dtype=torch.bool),
                                  select_count)[:, :, 0] > 0).sum(-1)
    return batch * kv_heads * (int(support.max()) + min(window, seq_len)) * per_key


def _flops(batch, heads, q_len, kv_len, head_dim, causal, select_count=64, window=512, **_):
    pos = torch.arange(kv_len - q_len, kv_len)
    pairs = (pos + 1).clamp(max=window) + (pos + 1 - window).clamp(min=0).clamp(max=select_count)
    return 4 * batch * heads * head_dim * int(pairs.sum())


register(MechanismSpec(
    name="sparsek",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"chunked": _chunked},
    step=_step,
    weights=_weights,
    params={"select_count": Param(64, int, "k: the keys before the window each query attends (its k best-scored), "
                                           "weighted by SPARSEK, which spreads k units of mass", low=1),
            "window": Param(512, int, "keys of the sliding window, the query's own included (w)", low=1)},
    test_params={"select_count": 3, "window": 4},
    inputs={"scores": TensorInput("(B, Hkv, N)", "u: each key's score from the scoring network (x_j w_score)")},
    tensor_inputs=key_score_inputs("scores"),
    tensor_inputs_per_token=("scores",),
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N (select_count + window))",
    summary="a learned score per key, the differentiable SPARSEK projection (clip(u - tau, 0, 1), sum k) as a soft "
            "mask on the k best-scored keys, plus a sliding window; checked against the paper's abstract and "
            "summaries (operator; a constant k keys per query); unverified readings (method section not at hand): "
            "the mask weights the values after the softmax, SPARSEK chooses among the keys before the window, "
            "no position term in the scores",
))
