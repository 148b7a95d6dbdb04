"""Image and video locality on the block-sparse kernel: neighborhood (NA / DiNA / GNA), HaloNet, Swin.

Tokens are laid out row-major on a grid whose last axes are given (``width``
for images; ``height, width`` of a frame for video); the first axis holds as
many rows / frames as the sequence needs (a ragged last one has fewer keys).
For tiled token orders use :mod:`attnkit.masks.spatial` directly.
"""
from __future__ import annotations

from ..params import Param
from ..masks.spatial import grid_for, halo, neighborhood, swin
from ..builders.mask_pipeline import register_mask_mechanism

NA = "Neighborhood Attention Transformer"
DINA = "Dilated Neighborhood Attention Transformer"
GNA = "Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at the Speed of Light"

register_mask_mechanism(
    "neighborhood_2d",
    papers=(NA, DINA, GNA),
    make_mask=lambda q, k, causal, width, kernel, dilation, stride: neighborhood(
        grid_for(k.shape[2], (width,)), kernel, dilation, stride),
    params={"width": Param(64, int, 'image width (tokens per row)', low=1),
            "kernel": Param(7, tuple, 'neighbourhood size per axis', item=int, low=1, scalar_ok=True),
            "dilation": Param(1, tuple, 'dilation per axis', item=int, low=1, scalar_ok=True),
            "stride": Param(1, tuple, 'query-group stride per axis (GNA)', item=int, low=1, scalar_ok=True)},
    test_params={"width": 9, "kernel": 3, "dilation": 2, "stride": 2},
    patterns={"noncausal-self"},
    summary="2-D neighborhood attention on a (rows, width) image: kernel, dilation, stride per axis",
    complexity="O(N kernel^2)",
)

register_mask_mechanism(
    "neighborhood_3d",
    papers=(NA, GNA),
    make_mask=lambda q, k, causal, height, width, kernel, dilation, causal_time: neighborhood(
        grid_for(k.shape[2], (height, width)), kernel, dilation, 1, (causal_time, False, False)),
    params={"height": Param(16, int, 'frame height', low=1), "width": Param(16, int, 'frame width', low=1),
            "kernel": Param((3, 7, 7), tuple, 'neighbourhood size per axis (time, height, width)', item=int, low=1, scalar_ok=True),
            "dilation": Param(1, tuple, 'dilation per axis', item=int, low=1, scalar_ok=True),
            "causal_time": Param(False, bool, 'causal along the time axis')},
    test_params={"height": 4, "width": 5, "kernel": (2, 3, 3), "dilation": 1, "causal_time": True},
    patterns={"noncausal-self"},
    summary="3-D neighborhood attention on (frames, height, width) video, optionally causal in time",
    complexity="O(N kernel^3)",
)

register_mask_mechanism(
    "halo_2d",
    papers=("Scaling Local Self-Attention for Parameter Efficient Visual Backbones",),
    make_mask=lambda q, k, causal, width, block, halo_size: halo(grid_for(k.shape[2], (width,)), block, halo_size),
    params={"width": Param(64, int, 'image width (tokens per row)', low=1), "block": Param(8, tuple, 'query block per axis', item=int, low=1, scalar_ok=True),
            "halo_size": Param(3, tuple, 'halo around each block per axis', item=int, low=0, scalar_ok=True)},
    test_params={"width": 12, "block": 4, "halo_size": 1},
    patterns={"noncausal-self"},
    summary="HaloNet blocked local attention: a block's queries see the block plus a halo around it",
    complexity="O(N (block + 2 halo)^2)",
)

register_mask_mechanism(
    "swin_2d",
    papers=("Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",),
    make_mask=lambda q, k, causal, width, window, shift: swin(grid_for(k.shape[2], (width,)), window, shift),
    params={"width": Param(64, int, 'image width (tokens per row)', low=1), "window": Param(8, tuple, 'window per axis', item=int, low=1, scalar_ok=True),
            "shift": Param(4, tuple, 'cyclic shift per axis', item=int, low=0, scalar_ok=True)},
    test_params={"width": 12, "window": 4, "shift": 2},
    patterns={"noncausal-self"},
    summary="Swin windowed attention; shift > 0 gives the shifted-window layer (cyclic shift + region mask)",
    complexity="O(N window^2)",
)
