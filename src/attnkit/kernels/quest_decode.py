"""Quest's decode step as one compiled pass per query head (``quest_decode.cpp``), when that kernel is built.

The torch form of the same step (:func:`attnkit.families.quest.decode_pages`, then
:func:`~attnkit.kernels.gathered_keys.decode_page_attention`) runs about 36
operators: the page bounds, a top-k, the keys scored where they lie, a softmax,
the values summed where they lie. The compiled kernel does the same per head in
one pass and prefetches each next page while it reads one. It computes the same
numbers, except that it breaks exact ties between page bounds toward the earlier
page (as the float64 reference does) where ``topk`` takes any.

Used for a step without gradients on the CPU in float32 or float64, when
:func:`attnkit.kernels.compiled.loaded` finds the build (see that module).
"""
from __future__ import annotations

import torch

from .compiled import loaded
from .gathered_keys import _first_rows_tensor, _rows_in_place


def compiled_step_applies(q, k, v, digest) -> bool:
    """Whether :func:`compiled_decode_step` takes a call that
    :func:`~attnkit.kernels.gathered_keys.reads_in_place` takes: the kernel is built and all four tensors share
    one dtype."""
    return q.dtype == k.dtype == v.dtype == digest.dtype and loaded("quest_decode") is not None


def compiled_decode_step(q, k, v, digest, *, page: int, top_k: int, scale: float) -> torch.Tensor:
    """One query per head at the end of the cache, ``q (B, H, 1, D)``: its ``top_k - 1`` past pages by the bounds
    ``digest (B, Hkv, 2 D, pages)`` (``[M_i; m_i]`` of at least the ``(N - 1) // page`` complete pages before its
    own), then softmax attention over them and its current page, ``(B, H, 1, Dv)``."""
    B, H, _, D = q.shape
    if digest.stride(-1) != 1:
        digest = digest.contiguous()
    k_rows, v_rows, firsts = _rows_in_place(k, v, H)
    first = _first_rows_tensor(firsts, torch.int64, q.device).view(len(firsts), B * H)
    out = loaded("quest_decode").quest_decode(q.reshape(B * H, D).contiguous(), digest, k_rows, v_rows, first[0],
                                              first[-1], H, k.shape[2], page, top_k - 1, scale)
    return out.view(B, H, 1, -1)
