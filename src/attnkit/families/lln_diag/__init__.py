"""LLN+Diag: linear log-normal attention averaged with block-diagonal softmax attention.

Nahshan, Kampeas & Haleva, "Linear Log-Normal Attention with Unbiased
Concentration" (2024), the combination the paper and its code recommend
(``LLNPlusDiagAttention``, mode "average")::

    out = (LLN(q, k, v) + BlockDiag(q, k, v)) / 2

- ``LLN`` is the ``lln`` mechanism in the paper's form, ``exp(alpha q)``,
  ``exp(beta k)`` (``alpha, beta`` as for ``lln``; no ``scale``);
- ``BlockDiag`` is softmax attention inside consecutive blocks of ``block``
  tokens (the code uses the head dimension, the default here), ``scale q.k``
  (default ``1/sqrt(d)``, the code's), causal inside the block when causal.

Blocks are counted from the first token of the stream, so decoding carries the
LLN state plus the keys and values of the current, unfinished block (``block``
rows, zero past the ``length % block`` that are filled): a constant-size state.
Forms: ``parallel`` (LLN's reference, block mask materialised ``(N, N)``),
``chunked`` (LLN's chunked scan, one softmax per block) and ``recurrent``.
Self-attention only.
"""
from __future__ import annotations

from .. import lln
from ...builders.stateful import register_stateful_mechanism
from ...params import Param
from .forms import FORMS, PATTERNS, lln_diag_weights


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    """LLN's chunked scan (chunk 64) plus one ``block x block`` softmax attention per block (block = head_dim)."""
    return 2 * batch * heads * q_len * (64 * head_dim + 64 * (head_dim + 1) + 2 * head_dim * (head_dim + 1)
                                        + 2 * head_dim * head_dim)


register_stateful_mechanism(
    "lln_diag",
    weights=lln_diag_weights,
    forms=FORMS,
    family="linear",
    papers=(lln.PAPER,),
    patterns=PATTERNS,
    params={**lln.PARAMS, "block": Param(None, int, "block size of the block-diagonal softmax; None: the head dim", low=1, optional=True),
            "chunk_size": Param(64, int, "tokens per chunk of the chunked form", low=1)},
    flops=_flops,
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, block=None, **params: (
        batch * heads * (head_dim * ((v_dim or head_dim) + 1)
                         + (block or head_dim) * (head_dim + (v_dim or head_dim)))),
    complexity="O(N)",
    summary="LLN+Diag: linear log-normal attention averaged with block-diagonal softmax attention",
    test_params={"alpha": 0.7, "beta": 0.8, "chunk_size": 16},
)
