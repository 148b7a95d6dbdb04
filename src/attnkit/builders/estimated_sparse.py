"""Training-free sparse prefill: estimate a block layout from a cheap look at q and k, then run the engine.

The prefill estimators of long-context inference (XAttention, FlexPrefill,
pooled block top-k, ...) all do two things: score every (query block, key
block) tile cheaply from the call's own q and k, keep some tiles, and run exact
softmax attention over the kept tiles. This recipe does the second half once:

- ``estimate(q, k, *, scale, **params) -> bool (B, H, R, nk)``: the kept tiles
  (``R`` query blocks, ``nk`` key blocks of ``block`` tokens, per query head), in
  the input dtype, as fast as the estimator allows;
- ``reference_layout(q, k, *, scale, **params)``: the same layout computed in
  float64 straight from the paper's equations (materialised scores, plain loops),
  the oracle the tests compare ``estimate`` with;
- two fast forms run the kept tiles exactly (causal inside them):
  ``tile_rows`` (the default; :mod:`attnkit.kernels.tile_rows`: each row's kept
  tiles gathered and run through PyTorch's fused attention kernel, several
  times faster on CPU) and ``selected_blocks`` (the run-time block-selection
  engine, :func:`~attnkit.kernels.selected_blocks.selected_block_attention`,
  with its memory-light recomputing backward); the reference masks
  materialised float64 attention with the reference layout.

Conventions every estimator here shares: causal self-attention (prefill) only;
the selection is not differentiable (gradients flow through the attention over
the kept tiles, as in the papers, which are inference methods); the estimate
reads the *whole* prompt (later queries and keys change which tiles an earlier
query keeps, as in every prefill estimator), so these mechanisms have no
incremental form and their causality guarantee is that no query attends a
later key.

:func:`selection_report` says what a call chose: density (attended pairs over
the causal pairs), attention-mass recall (the share of dense causal softmax mass
on the attended keys) and the output's relative error against dense attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..kernels.positions import causal_mask, query_positions, repeat_kv
from ..kernels.selected_blocks import selected_block_attention
from ..kernels.tile_rows import tile_rows_attention
from ..masks.selection import BlockSelection, block_selection
from ..params import Param
from ..reference import materialised_attention
from ..registry import MechanismSpec, get, register

def block_count(n: int, block: int) -> int:
    return -(-n // block)


def keep_by_cumulative_mass(scores: torch.Tensor, target: torch.Tensor, forced: torch.Tensor,
                            allowed: torch.Tensor) -> torch.Tensor:
    """Along the last dim: the forced entries, then entries in descending score order while the kept mass is
    still below ``target`` (the shortest such prefix reaches it). ``scores >= 0``; ``allowed`` limits the choice."""
    free = allowed & ~forced
    mass = (scores * forced).sum(-1, keepdim=True)
    ordered, order = scores.masked_fill(~free, -1.0).sort(dim=-1, descending=True, stable=True)
    before = mass + ordered.clamp(min=0).cumsum(-1) - ordered.clamp(min=0)
    take = (before < target.unsqueeze(-1)) & (ordered >= 0)
    return forced | torch.zeros_like(take).scatter(-1, order, take)


def selection_of(layout: torch.Tensor, *, block: int, q_len: int, kv_len: int) -> BlockSelection:
    """The engine's selection (per query head, ``block_q = block_k = block``) of a bool tile layout ``(B, H, R, nk)``."""
    width = max(1, int(layout.sum(-1).max()))
    kept, order = layout.to(torch.int8).sort(dim=-1, descending=True, stable=True)
    return block_selection(order[..., :width].contiguous(), kept[..., :width] > 0, block_q=block, block_k=block,
                           q_len=q_len, kv_len=kv_len)


def expand_layout(layout: torch.Tensor, block: int, q_len: int, kv_len: int) -> torch.Tensor:
    """Bool ``(B, H, q_len, kv_len)``: the (query, key) pairs a tile layout attends, causal rule included."""
    dense = layout.repeat_interleave(block, dim=2)[:, :, :q_len].repeat_interleave(block, dim=3)[..., :kv_len]
    return dense & causal_mask(q_len, kv_len, layout.device)


def last_queries_lines(q, k, scale: float, count: int, budget: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The mass of the causal attention ``A`` of the last ``n = min(count, Nq)`` queries on each vertical line and
    each slash line: ``(sum_t A(t, j), sum_t A(t, pos_t - o), n)``, both ``(B, H, Nk)``.

    ``A`` is never held whole: a few of its rows (about ``budget`` numbers) are computed, summed along both kinds
    of lines and dropped."""
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    n = min(count, Nq)
    pos = query_positions(n, Nk, q.device)
    keys = repeat_kv(k, H).transpose(-1, -2)
    j = torch.arange(Nk, device=q.device)
    columns, slashes = q.new_zeros(B, H, Nk), q.new_zeros(B, H, Nk)
    step = max(1, budget // max(1, B * H * Nk))
    for r0 in range(0, n, step):
        p = pos[r0:r0 + step]
        rows = q[:, :, Nq - n + r0: Nq - n + r0 + len(p)]
        a = torch.softmax((rows @ keys).mul_(scale).masked_fill_(j > p[:, None], float("-inf")), -1)
        columns += a.sum(2)
        along = p[:, None] - j  # row t's key on the slash line of offset o
        slashes += a.gather(-1, along.clamp(min=0).expand(B, H, -1, -1)).mul_(along >= 0).sum(2)
    return columns, slashes, n


@dataclass(frozen=True)
class Estimator:
    """An estimator's two layouts (fast and float64 reference) and its tile size parameter name."""

    estimate: Callable[..., torch.Tensor]
    reference_layout: Callable[..., torch.Tensor]
    block: Callable[..., int] = lambda **params: params["block"]


def register_estimated_sparse(*, name: str, paper: str, estimator: Estimator, params: dict[str, Param],
                              test_params: dict, summary: str, complexity: str, check: Callable[..., None]):
    """Register a prefill estimator: the fast form runs the engine on ``estimate``'s tiles."""

    def fast(q, k, v, *, causal, mask, scale, **p):
        check(**p)
        block = estimator.block(**p)
        layout = estimator.estimate(q.detach(), k.detach(), scale=scale, **p)
        sel = selection_of(layout, block=block, q_len=q.shape[2], kv_len=k.shape[2])
        return selected_block_attention(q, k, v, sel, scale=scale, causal=True)

    def reference(q, k, v, *, causal, mask, scale, **p):
        check(**p)
        layout = estimator.reference_layout(q.detach(), k.detach(), scale=scale, **p)
        allowed = expand_layout(layout, estimator.block(**p), q.shape[2], k.shape[2])
        return materialised_attention(q, k, v, causal=False, mask=allowed, scale=scale)

    def rows(q, k, v, *, causal, mask, scale, **p):
        check(**p)
        layout = estimator.estimate(q.detach(), k.detach(), scale=scale, **p)
        return tile_rows_attention(q, k, v, layout, block=estimator.block(**p), scale=scale)

    rows.__name__ = f"{name}_tile_rows"
    fast.__name__ = f"{name}_selected_blocks"
    reference.__name__ = f"{name}_reference"
    return register(MechanismSpec(
        name=name, family="training-free-sparse", papers=(paper,), patterns=frozenset({"causal-self"}),
        reference=reference, fast={"tile_rows": rows, "selected_blocks": fast}, default_forms=("tile_rows",), step=None, params=params, test_params=test_params,
        supports_mask=False, complexity=complexity, summary=summary,
        selection_reads_whole_prompt=True, extra={"estimator": estimator},
    ))


def attended_rows(name: str, q, k, rows: torch.Tensor, *, scale: float, **params) -> tuple[torch.Tensor, float]:
    """Bool ``(B, H, len(rows), Nk)`` (the keys query rows ``rows`` attend) and the density of the whole call."""
    spec = get(name)
    p = {**spec.defaults, **params}
    if "attended" in spec.extra:
        return spec.extra["attended"](q, k, rows, scale=scale, **p)
    est: Estimator = spec.extra["estimator"]
    block = est.block(**p)
    layout = est.estimate(q, k, scale=scale, **p)
    Nq, Nk = q.shape[2], k.shape[2]
    density = selection_of(layout, block=block, q_len=Nq, kv_len=Nk).density(causal=True)
    tiles = layout[:, :, rows // block].repeat_interleave(block, dim=3)[..., :Nk]
    return tiles & (torch.arange(Nk, device=q.device) <= query_positions(Nq, Nk, q.device)[rows, None]), density


@torch.no_grad()
def selection_report(name: str, q, k, v, *, rows: int = 256, scale: float | None = None, **params) -> dict:
    """What mechanism ``name`` chose on this call: density, attention-mass recall and output relative error.

    Recall and error are measured on ``rows`` query positions spread evenly over the
    sequence (all of them when there are fewer); density counts the whole call.
    """
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    picked = torch.linspace(0, Nq - 1, min(rows, Nq), device=q.device).round().long().unique()
    kept, density = attended_rows(name, q, k, picked, scale=scale, **params)
    scores = (q[:, :, picked] @ repeat_kv(k, H).transpose(-1, -2)).double() * scale
    past = torch.arange(Nk, device=q.device) <= query_positions(Nq, Nk, q.device)[picked, None]
    p = torch.softmax(scores.masked_fill(~past, float("-inf")), dim=-1)
    dense = p @ repeat_kv(v, H).double()
    spec = get(name)
    form = next(iter(spec.fast.values()))
    out = form(q, k, v, causal=True, mask=None, scale=scale, **{**spec.defaults, **params})[:, :, picked].double()
    return {"density": density, "recall": float((p * kept).sum(-1).mean()),
            "output_rel_error": float((out - dense).norm() / dense.norm()), "rows": len(picked)}
