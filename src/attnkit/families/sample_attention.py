"""SampleAttention (Zhu et al., "SampleAttention: Near-Lossless Acceleration of Long Context LLM Inference
with Adaptive Structured Sparse Attention", 2024).

Two structures carry most of a long prompt's attention: a local window and a
few column stripes (keys many queries read). Per head, a sample of the query
rows finds the stripes; the window is a fixed share of the sequence::

    A_s   = softmax(Q[I_s] K^T / sqrt(d) + causal)       sampled rows I_s (ratio row_ratio)
    a(j)  = sum_{t in I_s} A_s(t, j)                      accumulated column mass
    C     = the fewest columns, by descending a(j), with sum_{j in C} a(j) >= alpha sum_j a(j)
    W     = {offsets 0 .. w - 1},  w = max(1, round(window_ratio N))

and every query ``i`` attends exactly ``{j <= i : j in C or i - j < w}`` (the
cumulative residual attention threshold ``alpha`` sets each head's stripe budget).

Conventions: the sampled rows are every ``s``-th query counted back from the
last, ``s = round(1 / row_ratio)`` (the last query always sampled); ties go to
the earlier column; one choice per query head; the estimate runs in the input
dtype. The fast form ``lines`` runs the stripes and the window exactly through
:mod:`attnkit.kernels.line_attention` (vertical lines = ``C``, slash lines =
``W``); heads keeping different numbers of stripes pad theirs with unused slots.
"""
from __future__ import annotations

import torch

from ..kernels.line_attention import line_attention, line_density, line_rows
from ..kernels.positions import repeat_kv
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, register

PAPER = ("SampleAttention: Near-Lossless Acceleration of Long Context LLM Inference with Adaptive Structured "
         "Sparse Attention")


def sampled_rows(N: int, row_ratio: float, device=None) -> torch.Tensor:
    step = max(1, round(1 / row_ratio))
    return torch.arange(N - 1, -1, -step, device=device).flip(0)


def window_of(N: int, window_ratio: float) -> int:
    return max(1, round(window_ratio * N))


def stripes(q, k, *, scale, row_ratio, alpha):
    """Kept columns ``(B, H, c)`` (largest first) and which slots are used."""
    N = k.shape[2]
    rows = sampled_rows(N, row_ratio, q.device)
    s = (q[:, :, rows] @ repeat_kv(k, q.shape[1]).transpose(-1, -2)) * scale
    a = torch.softmax(s.masked_fill(torch.arange(N, device=q.device) > rows[:, None], float("-inf")), -1).sum(2)
    ordered, order = a.sort(dim=-1, descending=True, stable=True)
    before = ordered.cumsum(-1) - ordered
    take = before < alpha * a.sum(-1, keepdim=True)
    width = int(take.sum(-1).max())
    return order[..., :width], take[..., :width]


def sample_attention_lines(q, k, v, *, causal, mask, scale, row_ratio, alpha, window_ratio, block):
    C, used = stripes(q.detach(), k.detach(), scale=scale, row_ratio=row_ratio, alpha=alpha)
    W = torch.arange(window_of(k.shape[2], window_ratio), device=q.device).expand(*C.shape[:2], -1)
    return line_attention(q, k, v, C, W, scale=scale, block=block, v_valid=used)


def reference_mask(q, k, *, scale, row_ratio, alpha, window_ratio) -> torch.Tensor:
    """The kept pairs ``(B, H, N, N)`` from the equations in float64, the column set grown by a loop."""
    B, H, N, _ = q.shape
    i = torch.arange(N, device=q.device)
    causal = i[None, :] <= i[:, None]
    s = (q.double() @ repeat_kv(k, H).double().transpose(-1, -2)) * scale
    rows = sampled_rows(N, row_ratio, q.device)
    a = torch.softmax(s[:, :, rows].masked_fill(~causal[rows], float("-inf")), -1).sum(2)
    keep = (i[:, None] - i[None, :] < window_of(N, window_ratio)) & causal
    keep = keep.expand(B, H, N, N).clone()
    for b in range(B):
        for h in range(H):
            mass, total = 0.0, float(a[b, h].sum())
            for j in sorted(range(N), key=lambda j: (-float(a[b, h, j]), j)):
                if mass >= alpha * total:
                    break
                keep[b, h][:, j] |= causal[:, j]
                mass += float(a[b, h, j])
    return keep


def _reference(q, k, v, *, causal, mask, scale, row_ratio, alpha, window_ratio, block):
    kept = reference_mask(q.detach(), k.detach(), scale=scale, row_ratio=row_ratio, alpha=alpha,
                          window_ratio=window_ratio)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def attended(q, k, rows, *, scale, row_ratio, alpha, window_ratio, block):
    C, used = stripes(q, k, scale=scale, row_ratio=row_ratio, alpha=alpha)
    N = k.shape[2]
    W = torch.arange(window_of(N, window_ratio), device=q.device).expand(*C.shape[:2], -1)
    return line_rows(C, W, rows, N, used), line_density(C, W, N, used)


register(MechanismSpec(
    name="sample_attention",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"lines": sample_attention_lines},
    step=None,
    params={"row_ratio": Param(0.05, float, "share of the query rows sampled", low=0.0, high=1.0, low_open=True),
            "alpha": Param(0.95, float, "attention mass the column stripes must cover", low=0.0, high=1.0,
                           low_open=True),
            "window_ratio": Param(0.08, float, "local window as a share of the sequence", low=0.0, high=1.0),
            "block": Param(64, int, "queries per chunk and tokens per covering key tile", low=1)},
    test_params={"row_ratio": 0.25, "alpha": 0.6, "window_ratio": 0.1, "block": 16},
    supports_mask=False,
    complexity="O(N (stripes + window) d)",
    summary="prefill: a local window and the column stripes covering alpha of sampled rows' attention, exactly",
    selection_reads_whole_prompt=True, extra={"attended": attended},
))
