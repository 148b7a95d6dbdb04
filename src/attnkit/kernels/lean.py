"""LeanAttention: decode attention as a stream-K reduction of online-softmax partial states.

Lean Attention (Sanovar, Bharadwaj, St. Amant, Rühle and Rajmohan, "Lean
Attention: Hardware-Aware Scalable Attention Mechanism for the Decode-Phase of
Transformers", 2024) observes that online softmax is an associative reduction.
For one query row ``q`` and a piece ``P`` of the keys, with ``s_j = scale q . k_j``:

    m_P = max_{j in P} s_j,    l_P = sum_{j in P} exp(s_j - m_P),    o_P = sum_{j in P} exp(s_j - m_P) v_j

and two pieces merge exactly (in any order, any grouping):

    m = max(m_A, m_B),   l = e^(m_A - m) l_A + e^(m_B - m) l_B,   o = e^(m_A - m) o_A + e^(m_B - m) o_B,

with the output ``o / l`` (zeros when ``l = 0``: a row that sees no key)
(:mod:`attnkit.kernels.online_softmax`). So
the decode step's work, the flat sequence of (batch, kv head, key tile) units,
is cut stream-K style into ``workers`` equal contiguous runs that cross head
boundaries: every worker does the same amount of work whatever B, H and the
context length are, where splitting by head leaves workers idle when
``B * kv_heads`` does not divide among them. Each worker turns its run into at
most three batched pieces (the tail of one head, whole heads, the head of
another), each giving partial states; the states of a head are then merged.

On a CPU the workers are threads, each running its pieces with one intra-op
thread (torch ops release the GIL). Under autograd the same pieces run one
after another on the calling thread and the merge is differentiable, so the
form has gradients too. A query head group (GQA) shares its kv head's pieces.
"""
from __future__ import annotations

import torch

from .grad_mode import records_graph
from .online_softmax import fold, merge, output
from .positions import query_positions
from .workers import run_in_threads

CACHE_SCORES = 1 << 16  # scores per step of a worker's sweep (256 KB in fp32)


def stream_k_runs(units_per_head: int, heads: int, workers: int) -> list[tuple[int, int]]:
    """Each worker's run ``[start, stop)`` of the flat ``heads * units_per_head`` units (equal up to one unit)."""
    total = units_per_head * heads
    return [(w * total // workers, (w + 1) * total // workers) for w in range(workers)]


def _pieces(run, units_per_head):
    """A run of flat units as ``(head_start, head_stop, unit_start, unit_stop)`` pieces of equal length in each head."""
    start, stop = run
    pieces = []
    while start < stop:
        head, unit = divmod(start, units_per_head)
        if unit == 0 and stop - start >= units_per_head:  # whole heads, batched together
            n = (stop - start) // units_per_head
            pieces.append((head, head + n, 0, units_per_head))
            start += n * units_per_head
        else:
            end = min(stop, (head + 1) * units_per_head)
            pieces.append((head, head + 1, unit, end - head * units_per_head))
            start = end
    return pieces


def lean_attention(q, k, v, *, causal: bool, mask, scale: float, workers: int = 2, tile: int = 256) -> torch.Tensor:
    """Exact softmax attention ``(B, H, Nq, Dv)`` computed as LeanAttention's stream-K reduction.

    Meant for decode (few queries against a long cache); any ``Nq <= Nk`` is
    exact (bottom-right causal alignment). ``mask`` is a normalised 4-D
    boolean or additive mask or None; ``tile`` keys are the unit of work.
    """
    B, H, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
    g = H // Hkv
    heads = B * Hkv
    qh = (q * scale).reshape(heads, g * Nq, D)  # a kv head's query rows: its g query heads x Nq queries
    kh, vh = k.reshape(heads, Nk, D), v.reshape(heads, Nk, Dv)
    masks = _masks(mask, causal, B, H, Hkv, Nq, Nk, q)
    units = -(-Nk // tile)
    runs = [r for r in stream_k_runs(units, heads, workers) if r[0] < r[1]]

    def work(run):
        return [_partial(qh, kh, vh, masks, piece, tile, Nk) for piece in _pieces(run, units)]

    needs_graph = records_graph(q, k, v)
    if needs_graph or len(runs) == 1 or q.device.type != "cpu":
        results = [work(r) for r in runs]
    else:
        results = run_in_threads(work, runs)
    states = [s for worker in results for s in worker]
    out = _merge(states)
    return out.view(B, Hkv, g, Nq, Dv).reshape(B, H, Nq, Dv)


def _masks(mask, causal, B, H, Hkv, Nq, Nk, q):
    """What the pieces apply to their scores, each ``(B * Hkv, g * Nq, Nk)`` or None: an additive
    float mask, and the boolean ``blocked`` pairs (the causal rule and a boolean mask). Blocked
    scores are written as -inf, never added: a NaN key's score plus -inf would stay NaN and
    reach rows that must not see it. Both are None for a one-token causal decode step."""
    allowed = None
    if causal and Nq > 1:
        allowed = torch.arange(Nk, device=q.device) <= query_positions(Nq, Nk, q.device)[:, None]
    additive = None
    if mask is not None:
        full = mask.expand(B, H, Nq, Nk)
        if mask.dtype == torch.bool:
            allowed = full if allowed is None else full & allowed
        else:
            additive = full.reshape(B * Hkv, -1, Nk)
    blocked = None if allowed is None else ~allowed.expand(B, H, Nq, Nk).reshape(B * Hkv, -1, Nk)
    return additive, blocked


def _partial(qh, kh, vh, masks, piece, tile, Nk):
    """Heads ``h0:h1`` and their partial softmax state over keys ``u0 * tile : u1 * tile``.

    The keys are swept in steps whose scores stay in a core's cache (about
    64k numbers), the states of the steps folded together as they come.
    """
    h0, h1, u0, u1 = piece
    k0, k1 = u0 * tile, min(u1 * tile, Nk)
    q = qh[h0:h1]
    step = max(256, CACHE_SCORES // (q.shape[0] * q.shape[1]))
    in_place = not torch.is_grad_enabled()
    additive, blocked = masks
    run = None
    for a in range(k0, k1, step):
        b = min(k1, a + step)
        s = torch.bmm(q, kh[h0:h1, a:b].transpose(1, 2))
        if additive is not None:
            s = s.add_(additive[h0:h1, :, a:b]) if in_place else s + additive[h0:h1, :, a:b]
        if blocked is not None:
            cut = blocked[h0:h1, :, a:b]
            s = s.masked_fill_(cut, float("-inf")) if in_place else s.masked_fill(cut, float("-inf"))
        run = fold(run, s, vh[h0:h1, a:b], base2=False, in_place=in_place)
    return h0, h1, run


def _merge(states):
    """Each head's output from its partial states, in head order.

    The states arrive in head order; a head cut between workers has several
    (consecutive), merged exactly; every other piece is one or more whole heads.
    Only small (rows x Dv) tensors are touched here: no parallel region waits
    on a busy core.
    """
    outs, i = [], 0
    in_place = not torch.is_grad_enabled()
    while i < len(states):
        j = i + 1
        while j < len(states) and states[j][:2] == states[i][:2]:
            j += 1
        merged = merge([st[2] for st in states[i:j]], base2=False, in_place=in_place)
        outs.append(output(merged, in_place=in_place))
        i = j
    return torch.cat(outs)
