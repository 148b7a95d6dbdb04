"""Local attention patterns on the block-sparse kernel: sliding windows and their relatives.

Each pattern is a mask function (:mod:`attnkit.masks.window`); causal calls
see ``window`` keys before the query, non-causal calls ``window`` on each side.

At the ends of a non-causal sequence ``sliding_window`` and ``dilated_window``
follow Neighborhood Attention (NA / DiNA) by default, ``border="shift"``: the
window of ``2 * window + 1`` keys (of the query's residue class when dilated)
shifts inwards, so every query sees the same number of keys, as in NATTEN.
``border="clamp"`` cuts the window at the ends instead (Longformer-style local
attention: queries near an end see fewer keys). Causal windows end at the query
under both rules.

A causal call of ``sliding_window`` without a mask (and no more queries than keys) runs on
:mod:`attnkit.kernels.sliding_window`, forward and backward: query tiles that each read one
contiguous slice of keys, with no block layout to build. Other calls run the block-sparse kernel.
"""
from __future__ import annotations

import torch

from ..builders.mask_pipeline import DedicatedForm, register_mask_mechanism
from ..kernels.grad_mode import records_graph
from ..kernels.sliding_window import sliding_window_attention
from ..masks import window as w
from ..masks.spatial import Grid, neighborhood
from ..params import Param

SPARSE_TRANSFORMER = "Generating Long Sequences with Sparse Transformers"
STREAMING = "Efficient Streaming Language Models with Attention Sinks"
BORDERS = ("shift", "clamp")
BORDER = Param("shift", str, "non-causal ends: 'shift' the window inwards (NA / DiNA) or 'clamp' it", choices=BORDERS)


def _sides(causal, window):
    return (window, 0) if causal else (window, window)


def _local(k, causal, window, dilation, border):
    """A causal window, or a non-causal one shifted (NA / DiNA) or clamped at the ends."""
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS} ('shift': NA / DiNA, 'clamp': cut at the ends), "
                         f"got {border!r}")
    if causal or border == "clamp" or k.shape[2] == 0:
        return w.dilated_window(*_sides(causal, window), dilation=dilation)
    w._check_int("window", window)
    return neighborhood(Grid([k.shape[2]]), 2 * window + 1, dilation=dilation)


def _window_tiles(q, k, v, *, causal, mask, scale, window, **_):
    """The causal window on its own kernel, whose window counts the query's own key: ``window + 1`` keys."""
    return sliding_window_attention(q, k, v, window=window + 1, scale=scale)


def _window_tiles_can_run(q, k, v, *, causal, mask, **_):
    if not causal:
        return "non-causal: the kernel's windows end at the query"
    if mask is not None:
        return "a mask: the kernel holds the window alone"
    if q.shape[2] > k.shape[2]:
        return f"{q.shape[2]} queries > {k.shape[2]} keys: the first queries see no key"
    return None


def _window_tiles_pays_off(q, k, v, **_):
    """Measured at 16k tokens, causal window 512 (``attnkit bench kernels``): the kernel is the faster form
    forward and backward, and forward-only on one thread (12%); forward-only on more threads the block-sparse
    engine, which splits its rows between the threads, is 1-5% faster."""
    graded = records_graph(q, k, v)
    if graded or torch.get_num_threads() == 1:
        return None
    return "forward only on several threads: the block-sparse engine is faster there"


register_mask_mechanism(
    "sliding_window",
    papers=("Transformer Transducer: A Streamable Speech Recognition Model with Transformer Encoders and RNN-T Loss",
            "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the Threadblock Level"),
    make_mask=lambda q, k, causal, window, border: _local(k, causal, window, 1, border),
    params={"window": Param(512, int, 'keys on each allowed side of the query (before it if causal)', low=0),
            "border": BORDER},
    test_params={"window": 5},
    summary="local attention: `window` keys before the query if causal; if not, 2 * `window` + 1 keys around it, "
            "shifted inwards at the ends (border='shift', NA, default) or cut there (border='clamp')",
    complexity="O(N window)",
    decode_bound=lambda window, **_: (0, window),
    dedicated_forms={"window_tiles": DedicatedForm(_window_tiles, _window_tiles_can_run, _window_tiles_pays_off)},
)

register_mask_mechanism(
    "dilated_window",
    papers=("Dilated Neighborhood Attention Transformer",),
    make_mask=lambda q, k, causal, window, dilation, border: _local(k, causal, window, dilation, border),
    params={"window": Param(256, int, 'keys on each allowed side, counted in dilated steps', low=0),
            "dilation": Param(2, int, 'step between visible keys', low=1), "border": BORDER},
    test_params={"window": 4, "dilation": 3},
    summary="every `dilation`-th key within `window * dilation` positions (1-D DiNA); non-causal: the window "
            "shifts inwards at the ends (border='shift', DiNA, default) or is cut there (border='clamp')",
    complexity="O(N window)",
    decode_bound=lambda window, dilation, **_: (0, window * dilation),
)

register_mask_mechanism(
    "sinks_window",
    papers=(STREAMING,),
    make_mask=lambda q, k, causal, sinks, window: w.sinks(sinks) | w.sliding_window(*_sides(causal, window)),
    params={"sinks": Param(4, int, 'first keys every query sees', low=0), "window": Param(512, int, 'keys on each allowed side of the query', low=0)},
    test_params={"sinks": 2, "window": 5},
    summary="StreamingLLM: the first `sinks` keys plus a sliding window",
    complexity="O(N (window + sinks))",
    decode_bound=lambda sinks, window, **_: (sinks, window),
)

register_mask_mechanism(
    "global_window",
    papers=("ETC: Encoding Long and Structured Inputs in Transformers",),
    make_mask=lambda q, k, causal, globals, window: w.global_window(globals, *_sides(causal, window)),
    params={"globals": Param(16, int, 'first tokens that attend to and from all', low=0), "window": Param(256, int, 'keys on each allowed side of the query', low=0)},
    test_params={"globals": 3, "window": 4},
    summary="ETC global-local: `globals` tokens attend to and from all; the rest attend within a window",
    complexity="O(N (window + globals))",
    decode_bound=lambda globals, window, **_: (globals, window),
)


register_mask_mechanism(
    "moa",
    papers=("MoA: Mixture of Sparse Attention for Automatic Large Language Model Compression",),
    make_mask=lambda q, k, causal, alphas, betas: w.elastic_windows(q.shape[1], alphas, betas, not causal),
    params={"alphas": Param((64, 128, 256, 512), tuple, 'base span alpha_h per head (cycled over heads)', item=int, low=1),
            "betas": Param((0.0, 0.0625, 0.125, 0.25), tuple, 'growth beta_h of the span per token seen (cycled over heads)', item=float, low=0, high=1, high_open=True)},
    test_params={"alphas": (2, 4, 8), "betas": (0.0, 0.1, 0.25)},
    summary="per-head elastic sliding windows: head h spans alpha_h + beta_h * n keys, n = tokens seen",
    complexity="O(N sum_h span_h)",
)


def _multi_window(q, k, causal, windows):
    lefts = w.multi_windows(q.shape[1], windows)
    return w.head_windows(lefts, None if causal else lefts)


register_mask_mechanism(
    "multi_window",
    papers=("Masked Autoencoders with Multi-Window Local-Global Attention Are Better Audio Learners",),
    make_mask=_multi_window,
    params={"windows": Param((64, 128, 256, 0), tuple, 'window per head (cycled over heads); 0: a global head', item=int, low=0)},
    test_params={"windows": (3, 6, 0)},
    summary="MW-MHA: each head has its own window size (0 = a global head)",
    complexity="O(N sum_h window_h)",
)
