"""CoPE registered as a mechanism: softmax attention with contextual positions.

Golovneva et al., "Contextual Position Encoding: Learning to Count What's
Important" (2024); the equations and both forms are in
:mod:`attnkit.positional.cope`. Tensor input ``pos_emb`` ``(npos, head_dim)``:
the learned position embeddings, shared by the heads as in the paper's code.
Causal only (positions count gates from the key up to the query).
"""
from __future__ import annotations

import torch

from ..params import TensorInput
from ..positional.cope import cope_chunked, cope_reference, cope_weights
from ..registry import MechanismSpec, register
from ..validation import check_int, check_tensor
from ..builders.kv_cache_step import kv_cache_step
from ..builders.score_pipeline import CHUNK_PARAMS

PAPER = "Contextual Position Encoding: Learning to Count What's Important"


def _checked(form, chunked: bool):
    def run(q, k, v, *, causal, mask, scale, pos_emb=None, q_chunk=None, kv_chunk=None):
        if not isinstance(pos_emb, torch.Tensor) or pos_emb.ndim != 2:
            raise ValueError("pos_emb must be a tensor of shape (npos, head_dim): CoPE's position embeddings")
        check_tensor("pos_emb", pos_emb, (pos_emb.shape[0], q.shape[3]), q)
        if not chunked:
            return form(q, k, v, mask=mask, scale=scale, pos_emb=pos_emb)
        check_int("q_chunk", q_chunk)
        check_int("kv_chunk", kv_chunk)
        return form(q, k, v, mask=mask, scale=scale, pos_emb=pos_emb, q_chunk=q_chunk, kv_chunk=kv_chunk)

    run.__name__ = form.__name__
    return run


def _cope_weights(q, k, v, *, mask, scale, pos_emb):
    return cope_weights(q, k, mask=mask, scale=scale, pos_emb=pos_emb)


chunked = _checked(cope_chunked, True)
register(
    MechanismSpec(
        name="cope",
        family="softmax",
        papers=(PAPER,),
        patterns=frozenset({"causal-self", "causal-cross"}),
        reference=_checked(cope_reference, False),
        fast={"chunked": chunked},
        step=kv_cache_step(chunked),
        params=dict(CHUNK_PARAMS),
        inputs={"pos_emb": TensorInput("(npos, D)", "learned embeddings of the contextual positions 0..npos-1, shared by the heads")},
        tensor_inputs=lambda q, k, v, g: {"pos_emb": torch.randn(16, q.shape[3], generator=g, dtype=q.dtype)},
        summary="softmax(s + q . e[p]) with p = gated count of keys from j to i, interpolated",
        test_params={"q_chunk": 16, "kv_chunk": 24},
        weights=_checked(_cope_weights, False),
    )
)
