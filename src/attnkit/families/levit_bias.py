"""LeViT's attention bias: a learned per-head bias of the 2-D offset between two patches.

Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference" (2021),
section 4.2 ("Attention bias instead of a positional embedding"): for patches ``(x, y)`` and
``(x', y')`` of a feature map, head ``h`` adds

    A^h_{(x,y),(x',y')} = Q_(x,y) . K_(x',y') * scale + B^h_{|x - x'|, |y - y'|},

a translation-invariant bias that depends only on the absolute offsets along each axis (so it is
also symmetric). Self-attention only: the offsets are between patches of one feature map. The tokens are the patches in row-major order on a grid ``width`` patches wide:
token ``p`` is at ``(x, y) = (p mod width, p div width)``. Tensor input ``table`` ``(heads,
rows, width)``: ``table[h, dy, dx] = B^h_{dx, dy}``; a sequence may span at most ``rows`` grid rows.
Only the bias is the paper's attention; LeViT's shrinking stages and ``Hardswish`` on the values
belong to its network, not to this op.
"""
from __future__ import annotations

import torch

from ..builders.score_pipeline import register_score_mechanism
from ..registry import SELF_PATTERNS
from ..params import Param, TensorInput
from ..validation import check_int, check_tensor

PAPER = "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference"


def levit_bias(table: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, width: int) -> torch.Tensor:
    """``B^h[i, j] = table[h, |y_i - y_j|, |x_i - x_j|]`` for row-major grid positions, ``(H, Nq, Nk)``."""
    dy = (q_pos[:, None] // width - k_pos[None, :] // width).abs()
    dx = (q_pos[:, None] % width - k_pos[None, :] % width).abs()
    return table[:, dy, dx]


def _mod(q, k, *, table, width, **_):
    check_int("width", width, minimum=1)
    if not isinstance(table, torch.Tensor) or table.ndim != 3:
        raise ValueError("table must be a tensor of shape (heads, rows, width)")
    check_tensor("table", table, (q.shape[1], table.shape[1], width), q)
    rows_needed = -(-k.shape[2] // width)
    if rows_needed > table.shape[1]:
        raise ValueError(f"table has {table.shape[1]} rows of offsets but {k.shape[2]} tokens on a grid {width} "
                         f"wide span {rows_needed} rows")

    def mod(scores, q_pos, k_pos):
        return scores + levit_bias(table, q_pos, k_pos, width).to(scores.dtype)

    return mod


register_score_mechanism(
    "levit_bias",
    papers=(PAPER,),
    make_mod=_mod,
    mod_on_positions=True,
    patterns=SELF_PATTERNS,  # a bias between patches of one feature map
    params={"width": Param(8, int, "grid width in patches (tokens are patches in row-major order)", low=1)},
    inputs={"table": TensorInput("(H, rows, width)", "learned bias per head and (|dy|, |dx|) patch offset")},
    tensor_inputs=lambda q, k, v, g: {
        "table": torch.randn(q.shape[1], -(-k.shape[2] // 8), 8, generator=g, dtype=q.dtype)
    },
    summary="softmax + learned per-head bias of the 2-D patch offset (|dx|, |dy|): translation-invariant (LeViT)",
)
