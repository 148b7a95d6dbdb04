"""Online softmax: partial softmax states over disjoint sets of keys, and their exact merge.

For one query row with scores ``s_j`` over a set ``P`` of keys, in base ``b``
(``e``; or 2 when the scores were multiplied by ``log2 e``: on a CPU, PyTorch's
``exp`` drops to a slow path on inputs below about -87, the -inf of a masked
score included, where ``exp2`` keeps its speed), the partial state is

    m_P = max_{j in P} s_j,   l_P = sum_{j in P} b^(s_j - m_P),   o_P = sum_{j in P} b^(s_j - m_P) v_j.

States of disjoint key sets merge exactly, in any order and grouping
(FlashAttention; Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory"):

    m = max_i m_i,   w_i = b^(m_i - m),   l = sum_i w_i l_i,   o = sum_i w_i o_i,

and the row's output is ``o / l`` (zeros when ``l = 0``: a row that sees no
key), its log-sum-exp ``m + log_b l``. A normalised pair ``(out, lse)`` is the
state ``(out, lse, 1)``. Sweeping keys tile by tile (:func:`fold`) is this
merge with each new tile's weights taken against the new running maximum.

Maxima are clamped below at half the dtype's lowest value, so a row that has
seen only blocked (-inf) scores keeps a finite maximum and weights of exactly 0.
The maxima carry no gradient: they only shift the exponent and cancel in the
output and in the log-sum-exp.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch


class Partial(NamedTuple):
    """A partial softmax state of some rows: ``out (..., rows, Dv)`` unnormalised, ``max`` and ``sum`` ``(..., rows, 1)``."""

    out: torch.Tensor
    max: torch.Tensor
    sum: torch.Tensor


def floor(dtype: torch.dtype) -> float:
    """The lowest running maximum: finite, so that ``b^(-inf - floor)`` is 0 rather than NaN."""
    return torch.finfo(dtype).min / 2


def fold(run: Partial | None, s: torch.Tensor, v: torch.Tensor, *, base2: bool, in_place: bool) -> Partial:
    """The state ``run`` (None: no key yet) extended by the keys of scores ``s (batch, rows, keys)``, masked
    entries -inf, with values ``v (batch, keys, Dv)``. ``in_place`` (no autograd): ``s`` becomes the weights
    and ``run``'s tensors are updated in place, the values added by a fused ``baddbmm_`` (which may round
    the last bit differently from the out-of-place form)."""
    m = (s if in_place else s.detach()).amax(dim=-1, keepdim=True).clamp_(min=floor(s.dtype))
    if run is not None:
        m = torch.maximum(m, run.max)
    if in_place:
        p = s.sub_(m).exp2_() if base2 else s.sub_(m).exp_()
    else:
        p = torch.exp2(s - m) if base2 else torch.exp(s - m)
    if run is None:
        return Partial(torch.bmm(p, v), m, p.sum(-1, keepdim=True))
    w = torch.exp2(run.max - m) if base2 else torch.exp(run.max - m)
    if in_place:
        return Partial(run.out.mul_(w).baddbmm_(p, v), m, run.sum.mul_(w).add_(p.sum(-1, keepdim=True)))
    return Partial(run.out * w + torch.bmm(p, v), m, run.sum * w + p.sum(-1, keepdim=True))


def merge(states: Iterable[Partial], *, base2: bool, top: torch.Tensor | None = None,
          in_place: bool = False) -> Partial:
    """The state over the union of the states' (disjoint) key sets.

    ``top`` is the states' largest maximum when the caller knows it: ``states``
    is then read once, one at a time (a generator need not hold them all).
    ``in_place`` (no autograd): the states' tensors are overwritten, their owner
    no longer needs them; the arithmetic, and so the rounding, is the same.
    """
    if top is None:
        states = list(states)
        if len(states) == 1:
            return states[0]
        top = torch.stack([st.max for st in states]).amax(0)
    top = top.clamp(min=floor(top.dtype))
    out = total = None
    for st in states:
        w = torch.exp2(st.max - top) if base2 else torch.exp(st.max - top)
        o, l = (st.out.mul_(w), st.sum.mul_(w)) if in_place else (st.out * w, st.sum * w)
        if out is None:
            out, total = o, l
        elif in_place:
            out, total = out.add_(o), total.add_(l)
        else:
            out, total = out + o, total + l
    return Partial(out, top, total)


def normalise(state: Partial, *, base2: bool, empty_lse: float = float("-inf"), in_place: bool = False):
    """``(out, lse)``: the rows' outputs ``o / l`` (zeros for a row that saw no key) and their log-sum-exp in
    the state's base, ``(..., rows)``, ``empty_lse`` where a row saw no key. ``in_place``: ``state.out`` is
    divided in place."""
    total, top = state.sum.squeeze(-1), state.max.squeeze(-1)
    alive = total > 0
    safe = torch.where(alive, total, 1.0).unsqueeze(-1)
    out = state.out.div_(safe) if in_place else state.out / safe
    return out, torch.where(alive, top + (total.log2() if base2 else total.log()), empty_lse)


def output(state: Partial, *, in_place: bool = False) -> torch.Tensor:
    """The rows' outputs ``o / l`` alone (zeros for a row that saw no key), for callers that need no
    log-sum-exp. ``in_place``: ``state.out`` is divided in place."""
    total = state.sum
    safe = torch.where(total > 0, total, 1.0)
    return state.out.div_(safe) if in_place else state.out / safe


def merge_normalised(out_a, lse_a, out_b, lse_b):
    """Two normalised results over disjoint keys, ``out (..., rows, Dv)`` and natural ``lse (..., rows)``
    (-inf: no key), as the ``(out, lse)`` over their union. These are the states ``(out, lse, 1)``; their
    merge normalised is ``lse = log(e^lse_a + e^lse_b)``, ``out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b``,
    computed so, in one pass over the outputs."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, 0.0)  # two empty rows: weights e^(-inf) = 0, output 0
    w_a, w_b = torch.exp(lse_a - safe).unsqueeze(-1), torch.exp(lse_b - safe).unsqueeze(-1)
    return out_a * w_a + out_b * w_b, lse
