"""FlexPrefill (Lai et al., "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient
Long-Sequence Inference", ICLR 2025).

Per head, the last query block ``Qhat`` (``B = block`` queries) decides which
of two patterns the head gets and how many tiles it keeps::

    A     = softmax(Qhat K^T / sqrt(d) + causal)                 (B x N)
    abar  = pool_B(mean_t A(t, :))                 block-pooled true column mass
    ahat  = softmax(mean(Qhat) . pool_B(K)^T / sqrt(d))          pooled estimate
    d_JS  = sqrt(JSD(abar || ahat))

- ``d_JS < tau`` (the pooled estimate is faithful): **query-aware** head. The
  block map ``T(r, c) = softmax_{c <= r}(qbar_r . kbar_c / sqrt(d))`` (mean-pooled
  queries and keys) is flattened over all tiles, and the fewest tiles in
  descending order whose mass reaches ``gamma * R`` (every row has mass 1) are kept.
- otherwise: **vertical-slash** head. Vertical line scores ``a_v(j) = mean_t A(t, j)``
  and slash scores ``a_s(o) = mean_t A(t, p_t - o)``; the fewest lines reaching
  ``gamma`` of the mass give the budgets ``n_v``, ``n_s`` (in lines, then
  ``n // B + 1`` tiles); the ``n_v`` key blocks of highest pooled vertical score
  and the ``n_s`` block offsets of highest pooled slash score are kept; tile
  ``(r, c)`` is kept if ``c`` is a vertical block or ``r - c`` a slash offset.

Conventions (checked against the authors' ``get_active_blocks``): the
vertical-slash pattern runs at tile granularity (block 0 and block offset 0
always among the kept, counted in ``n_v``/``n_s``); every query-aware head also
keeps tile column 0 and the diagonal (the minimum budget of one vertical and one
slash tile; they do not count toward ``gamma``); the pooled estimate ``ahat``
spans all key blocks (the last query block sees them all); a last partial block
is pooled over its real tokens; ``0 log 0 = 0`` in the divergence. One choice
per query head. The estimate runs in the input dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..builders.estimated_sparse import (Estimator, block_count, keep_by_cumulative_mass, last_queries_lines,
                                         register_estimated_sparse)
from ..kernels.positions import repeat_kv
from ..kernels.token_blocks import block_means
from ..params import Param

PAPER = "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence Inference"


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``sqrt(JSD(p || q))`` along the last dim (natural log)."""
    m = (p + q) / 2

    def kl(a):
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - m.clamp_min(1e-300).log()), 0).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp_min(0).sqrt()


def lines_needed(scores: torch.Tensor, gamma: float) -> torch.Tensor:
    """How many of the largest entries (lines) it takes to reach ``gamma`` of the mass."""
    cum = scores.sort(dim=-1, descending=True).values.cumsum(-1)
    return (cum < gamma * cum[..., -1:]).sum(-1) + 1


def _pool_sum(x: torch.Tensor, block: int) -> torch.Tensor:
    R = block_count(x.shape[-1], block)
    return F.pad(x, (0, R * block - x.shape[-1])).reshape(*x.shape[:-1], R, block).sum(-1)


def _ranked(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool: the ``counts`` (per head) best entries, entry 0 always first (stable ties)."""
    forced = torch.arange(scores.shape[-1], device=scores.device) == 0
    order = scores.masked_fill(forced, float("inf")).sort(dim=-1, descending=True, stable=True).indices
    take = torch.arange(scores.shape[-1], device=scores.device) < counts[..., None]
    return torch.zeros_like(take).scatter(-1, order, take)


def flexprefill_layout(q, k, *, scale, block, gamma, tau) -> torch.Tensor:
    B, H, N, _ = q.shape
    R = block_count(N, block)
    columns, slashes, n = last_queries_lines(q, k, scale, block)
    a_v, a_s = columns / n, slashes / n
    kbar = repeat_kv(block_means(k, block), H)
    ahat = torch.softmax((q[:, :, -block:].mean(2, keepdim=True) @ kbar.transpose(-1, -2)).squeeze(2) * scale, -1)
    abar, sbar = _pool_sum(a_v, block), _pool_sum(a_s, block)
    query_aware = js_distance(abar, ahat) < tau  # (B, H)
    r = torch.arange(R, device=q.device)
    causal = r[None, :] <= r[:, None]
    n_v = (lines_needed(a_v, gamma) // block + 1).clamp(max=R)
    n_s = (lines_needed(a_s, gamma) // block + 1).clamp(max=R)
    vert, slash = _ranked(abar, n_v), _ranked(sbar, n_s)
    offset = (r[:, None] - r[None, :]).clamp(min=0)
    vs = (vert[:, :, None, :] | slash[:, :, offset]) & causal
    T = torch.softmax((block_means(q, block) @ kbar.transpose(-1, -2) * scale).masked_fill(~causal, float("-inf")), -1)
    flat = keep_by_cumulative_mass(T.flatten(2), torch.full((B, H), gamma * R, dtype=T.dtype, device=q.device),
                                   torch.zeros(B, H, R * R, dtype=torch.bool, device=q.device),
                                   causal.flatten().expand(B, H, -1))
    forced = causal & ((r[None, :] == 0) | (r[None, :] == r[:, None]))
    qa = flat.view(B, H, R, R) | forced
    return torch.where(query_aware[..., None, None], qa, vs)


def reference_layout(q, k, *, scale, block, gamma, tau) -> torch.Tensor:
    """From the equations in float64: materialised scores, per-head choices by sorting Python lists."""
    B, H, N, _ = q.shape
    R = block_count(N, block)
    q, keys = q.double(), repeat_kv(k, H).double()
    s = q @ keys.transpose(-1, -2) * scale
    n = min(block, N)
    i = torch.arange(N, device=q.device)
    A = torch.softmax(s[:, :, -n:].masked_fill(i[None, :] > i[-n:, None], float("-inf")), -1)
    qbar = torch.stack([q[:, :, c * block:(c + 1) * block].mean(2) for c in range(R)], 2)
    kbar = torch.stack([keys[:, :, c * block:(c + 1) * block].mean(2) for c in range(R)], 2)
    keep = torch.zeros(B, H, R, R, dtype=torch.bool, device=q.device)
    for b in range(B):
        for h in range(H):
            a_v = A[b, h].mean(0).tolist()
            a_s = [sum(float(A[b, h, t, N - n + t - o]) for t in range(n) if N - n + t - o >= 0) / n for o in range(N)]
            abar = [sum(a_v[c * block:(c + 1) * block]) for c in range(R)]
            sbar = [sum(a_s[c * block:(c + 1) * block]) for c in range(R)]
            ahat = torch.softmax(q[b, h, -n:].mean(0) @ kbar[b, h].T * scale, -1).tolist()
            m = [(x + y) / 2 for x, y in zip(abar, ahat)]
            jsd = sum(0.5 * x * math.log(x / z) for x, z in zip(abar, m) if x > 0)
            jsd += sum(0.5 * y * math.log(y / z) for y, z in zip(ahat, m) if y > 0)
            if max(jsd, 0.0) ** 0.5 < tau:
                T = torch.softmax((qbar[b, h] @ kbar[b, h].T * scale).masked_fill(
                    torch.ones(R, R, dtype=torch.bool, device=q.device).triu(1), float("-inf")), -1)
                tiles = sorted(((r, c) for r in range(R) for c in range(r + 1)), key=lambda t: (-float(T[t]), t[0] * R + t[1]))
                mass = 0.0
                for t in tiles:
                    if mass >= gamma * R:
                        break
                    keep[b, h, t[0], t[1]] = True
                    mass += float(T[t])
                for r in range(R):
                    keep[b, h, r, 0] = keep[b, h, r, r] = True
            else:
                def budget(scores):
                    ordered, total, cum = sorted(scores, reverse=True), sum(scores), 0.0
                    for count, x in enumerate(ordered, 1):
                        cum += x
                        if cum >= gamma * total:
                            return min(R, count // block + 1)
                    return min(R, len(scores) // block + 1)

                V = sorted(range(R), key=lambda c: (c != 0, -abar[c], c))[:budget(a_v)]
                S = sorted(range(R), key=lambda c: (c != 0, -sbar[c], c))[:budget(a_s)]
                for r in range(R):
                    for c in range(r + 1):
                        keep[b, h, r, c] = c in V or (r - c) in S
    return keep


register_estimated_sparse(
    name="flexprefill",
    paper=PAPER,
    estimator=Estimator(flexprefill_layout, reference_layout),
    params={"block": Param(128, int, "tokens per tile (query and key blocks)", low=1),
            "gamma": Param(0.9, float, "attention mass the kept tiles / lines must reach", low=0.0, high=1.0,
                           low_open=True),
            "tau": Param(0.1, float, "JS-distance below which a head is query-aware", low=0.0)},
    test_params={"block": 16, "gamma": 0.8, "tau": 0.3},
    check=lambda **_: None,
    summary="prefill: per head, query-aware tiles or vertical-slash tiles (JS-divergence test), budget by mass gamma",
    complexity="O(N B d) estimate + O(kept tiles B^2 d)",
)
