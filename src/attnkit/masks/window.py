"""Sliding-window masks and their relatives.

- sliding window: each query sees keys at distance ``-right <= q - kv <= left``
  (FlashAttention's ``window_size=(left, right)`` convention; causal: ``right=0``).
  Local attention as in Longformer-style / Mistral sliding windows; the
  limited-context streaming self-attention of "Transformer Transducer: A
  Streamable Speech Recognition Model with Transformer Encoders and RNN-T Loss".
- dilated sliding window: every ``dilation``-th key inside a ``dilation`` times
  wider window ("Dilated Neighborhood Attention Transformer", 1-D).
- sinks + window: the first ``sinks`` keys stay visible (Xiao et al., "Efficient
  Streaming Language Models with Attention Sinks", StreamingLLM).
- global + window: ``globals`` tokens attend to and are attended by everything
  ("ETC: Encoding Long and Structured Inputs in Transformers", global-local).
- per-head windows: head ``h`` uses its own window ("MoA: Mixture of Sparse
  Attention for Automatic Large Language Model Compression": elastic windows
  ``alpha_h + beta_h * N``; "Masked Autoencoders with Multi-Window Local-Global
  Attention Are Better Audio Learners": MW-MHA, one window size per head, 0 = global).
"""
from __future__ import annotations

import torch

from .base import MaskMod, or_masks
from ..validation import check_int


def _check_int(name: str, value, minimum: int = 0) -> int:
    return check_int(name, value, minimum=minimum)


def _distance_tiles(left, right):
    """Tile classifier for ``-right <= q - kv <= left`` with per-head or scalar bounds."""

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        d_min, d_max = q_lo - k_hi, q_hi - k_lo
        lo, hi = -right(h), left(h)
        return (d_max >= lo) & (d_min <= hi), (d_min >= lo) & (d_max <= hi)

    return tiles


def sliding_window(left: int, right: int = 0) -> MaskMod:
    """Keys with ``-right <= q - kv <= left``: ``left`` keys before the query, ``right`` after."""
    _check_int("window (left)", left)
    _check_int("window (right)", right)

    def fn(b, h, q, kv):
        d = q - kv
        return (d <= left) & (d >= -right)

    tiles = _distance_tiles(lambda h: left, lambda h: right)
    return MaskMod(fn, tiles, f"sliding_window({left},{right})")


def dilated_window(left: int, right: int = 0, dilation: int = 1) -> MaskMod:
    """Every ``dilation``-th key within ``left * dilation`` before and ``right * dilation`` after."""
    _check_int("dilation", dilation, 1)
    _check_int("window (left)", left)
    _check_int("window (right)", right)

    def fn(b, h, q, kv):
        d = q - kv
        return (d <= left * dilation) & (d >= -right * dilation) & (d.remainder(dilation) == 0)

    band = _distance_tiles(lambda h: left * dilation, lambda h: right * dilation)

    def tiles(*bounds):
        any_, all_ = band(*bounds)
        return any_, all_ & (dilation == 1)

    return MaskMod(fn, tiles, f"dilated_window({left},{right},d={dilation})")


def sinks(count: int) -> MaskMod:
    """The first ``count`` keys (attention sinks)."""
    _check_int("sinks", count)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        return k_lo < count, k_hi < count

    return MaskMod(lambda b, h, q, kv: kv < count, tiles, f"sinks({count})")


def global_queries(count: int) -> MaskMod:
    """The first ``count`` queries see every key (ETC's global-to-long part)."""
    _check_int("globals", count)

    def tiles(b, h, q_lo, q_hi, k_lo, k_hi):
        return q_lo < count, q_hi < count

    return MaskMod(lambda b, h, q, kv: q < count, tiles, f"global_queries({count})")


def sinks_window(sink_count: int, left: int) -> MaskMod:
    """StreamingLLM: the first ``sink_count`` keys plus a window of ``left`` recent keys."""
    return or_masks(sinks(sink_count), sliding_window(left, 0))


def global_window(global_count: int, left: int, right: int) -> MaskMod:
    """ETC global-local: global tokens see and are seen by all; long tokens see a window."""
    return or_masks(global_queries(global_count), sinks(global_count), sliding_window(left, right))


def head_windows(lefts: torch.Tensor, rights: torch.Tensor | None = None) -> MaskMod:
    """Per-head sliding windows: head ``h`` sees ``-rights[h] <= q - kv <= lefts[h]``.

    A negative entry means "no limit" (a global head, as MW-MHA's global heads).
    """
    lefts = torch.as_tensor(lefts, dtype=torch.long, device="cpu")  # small per-head tables, moved per use
    rights = torch.zeros_like(lefts) if rights is None else torch.as_tensor(rights, dtype=torch.long, device="cpu")
    big = torch.iinfo(torch.long).max // 4
    lefts = torch.where(lefts < 0, big, lefts)
    rights = torch.where(rights < 0, big, rights)

    def per_head(table):
        return lambda h: table.to(h.device)[h]

    left_of, right_of = per_head(lefts), per_head(rights)

    def fn(b, h, q, kv):
        d = q - kv
        return (d <= left_of(h)) & (d >= -right_of(h))

    return MaskMod(fn, _distance_tiles(left_of, right_of), f"head_windows({lefts.tolist()})")


def elastic_windows(heads: int, alphas, betas, symmetric: bool = False) -> MaskMod:
    """MoA's elastic rule: head ``h`` spans ``alpha_h + beta_h * n`` keys, ``n`` = tokens seen so far.

    ``n`` is the query's position + 1 (the input length when the query is the
    last token), so a decode step and a one-shot call agree. ``alphas`` and
    ``betas`` are cycled over heads; ``0 <= beta < 1``.
    """
    if not alphas or not betas:
        raise ValueError("alphas and betas must be non-empty sequences")
    if any(not 0 <= b < 1 for b in betas) or any(a < 1 for a in alphas):
        raise ValueError(f"need alphas >= 1 and 0 <= betas < 1, got alphas={alphas}, betas={betas}")
    a = torch.tensor([float(alphas[i % len(alphas)]) for i in range(heads)], dtype=torch.float64, device="cpu")
    b = torch.tensor([float(betas[i % len(betas)]) for i in range(heads)], dtype=torch.float64, device="cpu")

    def left(h, q):  # keys before the query: span - 1
        span = torch.floor(a.to(q.device)[h] + b.to(q.device)[h] * (q + 1).to(torch.float64))
        return span.to(torch.long) - 1

    def fn(bb, h, q, kv):
        reach = left(h, q)
        ok = q - kv <= reach
        return ok & (kv - q <= reach) if symmetric else ok & (kv <= q)

    def tiles(bb, h, q_lo, q_hi, k_lo, k_hi):
        # q - left(q) never decreases in q (beta < 1), and q + left(q) increases.
        any_ = (q_lo - left(h, q_lo) <= k_hi) & (k_lo <= (q_hi + left(h, q_hi) if symmetric else q_hi))
        all_ = (q_hi - left(h, q_hi) <= k_lo) & (k_hi <= (q_lo + left(h, q_lo) if symmetric else q_lo))
        return any_, all_

    return MaskMod(fn, tiles, f"elastic_windows({list(alphas)}, {list(betas)})")


def multi_windows(heads: int, windows) -> torch.Tensor:
    """MW-MHA: head ``h`` uses ``windows[h % len(windows)]``; 0 means a global head."""
    return torch.tensor([windows[i % len(windows)] - 1 if windows[i % len(windows)] > 0 else -1
                         for i in range(heads)], dtype=torch.long, device="cpu")
