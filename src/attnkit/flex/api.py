"""``attnkit.flex_attention``: FlexAttention's call, run on attnkit's block-sparse kernel, backward included.

Same arguments and meaning as ``torch.nn.attention.flex_attention.flex_attention``
(torch 2.13): ``score_mod(score, b, h, q_idx, kv_idx)`` modifies each scaled
score, ``block_mask`` (from ``create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN)``)
says which blocks are visited and ``mask_mod`` which pairs attend in its
partial blocks. ``mask_mod=`` may also be given directly (no BlockMask); the
layout is then built from it on each call. A user's callables run unchanged,
provided they are elementwise in their index arguments (attnkit calls them on
broadcastable index tensors, where eager FlexAttention vmaps them over scalars).

Differences from FlexAttention on CPU: the backward exists (gradients reach q,
k, v and tensors the ``score_mod`` closes over); ``kernel_options`` (Triton
tuning) are accepted and ignored; ``return_aux`` may ask for ``lse`` only.
A row that sees no key outputs zeros with ``lse = -inf``, as FlexAttention does.
"""
from __future__ import annotations

import torch

from ..kernels.block_sparse import block_sparse_attention
from ..kernels.block_sparse_flex import flex_block_sparse
from ..validation import check_qkv, check_scale
from .block_mask import check_block_mask, layout_from_block_mask, layout_from_mask_mod


def flex_attention(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False,
                   return_lse=False, kernel_options=None, *, return_aux=None, mask_mod=None, block_size=128):
    """Attention ``(B, Hq, L, Ev)`` with FlexAttention's ``score_mod`` and ``block_mask`` (or ``mask_mod``).

    Returns the output, ``(output, lse)`` with ``return_lse=True`` or
    ``(output, AuxOutput(lse=...))`` with ``return_aux=AuxRequest(lse=True)``;
    ``lse (B, Hq, L)`` is the natural log-sum-exp of each row's modified
    scores. ``block_size`` (int or ``(q, kv)`` pair) is the tile size when
    the layout is built from ``mask_mod``; a BlockMask brings its own.
    """
    check_qkv(query, key, value)
    B, H, L, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    if not enable_gqa and H != Hkv:
        raise ValueError(f"query has {H} heads and key/value have {Hkv}; set enable_gqa=True for grouped-query attention")
    if S == 0:
        raise ValueError("key has sequence length 0; expected at least one key")
    scale = check_scale(scale, D)
    for name, fn in (("score_mod", score_mod), ("mask_mod", mask_mod)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a callable or None, got {type(fn).__name__}")
    if block_mask is not None and mask_mod is not None:
        raise ValueError("pass block_mask or mask_mod, not both (a BlockMask carries its mask_mod)")
    want_lse = _wants_lse(return_lse, return_aux)
    if kernel_options is not None and not isinstance(kernel_options, dict):
        raise TypeError(f"kernel_options must be a dict or None, got {type(kernel_options).__name__}")
    block_q, block_k = _block_size(block_size)

    if block_mask is not None:
        check_block_mask(block_mask, batch=B, heads=H, q_len=L, kv_len=S, device=query.device)
        layout = layout_from_block_mask(block_mask, batch=B, heads=H, q_len=L, kv_len=S)
    else:
        mask = mask_mod if mask_mod is not None else _attend_all
        layout = layout_from_mask_mod(mask, batch=B, heads=H, q_len=L, kv_len=S, block_q=min(block_q, L),
                                      block_k=min(block_k, S), device=query.device)
    if score_mod is None and not want_lse and torch.is_grad_enabled():  # FlashAttention-2's backward, no recompute
        return block_sparse_attention(query, key, value, layout, scale=scale)
    out, lse = flex_block_sparse(query, key, value, layout, scale=scale, score_mod=score_mod)
    if return_aux is not None:
        from torch.nn.attention.flex_attention import AuxOutput

        return out, AuxOutput(lse=lse, max_scores=None)
    return (out, lse) if want_lse else out


def _attend_all(b, h, q_idx, kv_idx):
    return torch.ones_like(q_idx + kv_idx, dtype=torch.bool)


def _wants_lse(return_lse, return_aux) -> bool:
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if return_aux is None:
        return return_lse
    if return_lse:
        raise ValueError("pass return_lse or return_aux, not both")
    if not hasattr(return_aux, "lse") or not hasattr(return_aux, "max_scores"):
        raise TypeError(f"return_aux must be a torch.nn.attention.flex_attention.AuxRequest, got "
                        f"{type(return_aux).__name__}")
    if return_aux.max_scores:
        raise ValueError("return_aux=AuxRequest(max_scores=True) is not supported (as on FlexAttention's CPU path); "
                         "ask for lse only")
    return bool(return_aux.lse)


def _block_size(block_size) -> tuple[int, int]:
    pair = (block_size, block_size) if not isinstance(block_size, (tuple, list)) else tuple(block_size)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in pair):
        raise ValueError(f"block_size must be an integer >= 1 or a pair of them, got {block_size!r}")
    return pair
