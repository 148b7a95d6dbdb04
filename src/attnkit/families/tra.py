"""TRA: Threshold Relative Attention (Opper, Fernandez, Smolensky & Gao, "TRA: Better Length
Generalisation with Threshold Relative Attention", 2025).

Two changes to causal softmax attention, for length generalisation:

- *selective sparsity*: a key whose score does not pass a threshold leaves the softmax entirely
  (it gets weight exactly zero, not a small one);
- *contextualised relative distance*: the distance from a query to a key counts only the keys
  between them that the query kept, each weighted by a learned forget gate of that key.

With ``s_ij = scale q_i . k_j`` (plus an additive mask, if any), ``f_l = log sigmoid(g_l)`` the
log forget gate of key ``l`` (``g`` the tensor input ``forget``, one logit per key and kv head)::

    kept_ij = (j visible to i) and s_ij > 0                      (a ReLU threshold on the scores)
    d_ij    = sum_{l = j .. i, kept_il} f_l                     (<= 0: a penalty growing with the kept keys between)
    out_i   = sum_{j kept} softmax_j(s_ij + d_ij) v_j           (zeros when query i keeps no key)

Reading of the paper and its authors' notebook: the threshold is a ReLU on the scaled scores
(a key passes when its score is positive), applied after the causal mask; the forget gate comes from
the key token (the notebook's ``delta_proj(x)``, one per head; here one per kv head, which is
the same without GQA); the distance includes both ends when they are kept. The notebook
normalises q and k (QK-norm) before the scores: that belongs to the layer
(``attnkit.nn.Attention(..., qk_norm=True)``), not to this op. Which keys are kept is a discrete
choice: gradients flow through the kept scores and the kept keys' gates.

Forms: ``reference`` (the whole matrix) and ``chunked``: key chunks visited from the last to the
first while each query carries the sum of its kept gates to the right, with an online softmax:
exact, ``O(N)`` memory, each query chunk recomputed in the backward pass
(:mod:`attnkit.kernels.right_to_left`, shared with CoPE). Causal only (the
distance is counted up to the query); decoding keeps every key and its gate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..builders.key_scores import check_key_scores, key_score_inputs, scored_kv_cache_step
from ..builders.score_pipeline import CHUNK_PARAMS
from ..kernels.positions import query_positions, repeat_kv
from ..kernels.right_to_left import right_to_left_attention
from ..params import TensorInput
from ..registry import MechanismSpec, register
from ..scores.normalisers import SOFTMAX
from ..scores.user_mask import apply_mask
from ..state import ScoredKVCache
from ..validation import check_int

PAPER = "TRA: Better Length Generalisation with Threshold Relative Attention"


def _kept_scores(s, q_pos, k_pos, mask):
    """``(scores, kept)``: the additive mask added, and the visible pairs whose score is positive."""
    s, allowed = apply_mask(s, (k_pos[None, :] <= q_pos[:, None]).expand_as(s), mask)
    return s, allowed & (s > 0)


def tra_weights(q, k, *, mask, scale, forget):
    """The attention weights ``(B, H, Nq, Nk)``: softmax of ``s + d`` over the kept keys, zero elsewhere."""
    check_key_scores("forget", q, k, forget)
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    q_pos, k_pos = query_positions(Nq, Nk, q.device), torch.arange(Nk, device=q.device)
    s, kept = _kept_scores((q @ repeat_kv(k, H).transpose(-1, -2)) * scale, q_pos, k_pos, mask)
    gates = repeat_kv(F.logsigmoid(forget)[:, :, None, :], H) * kept  # (B, H, Nq, Nk): f_l on kept pairs
    distance = gates.flip(-1).cumsum(-1).flip(-1)  # d_ij = sum over kept l >= j (kept stops at the query)
    return SOFTMAX.weights(s + distance, kept)


def _reference(q, k, v, *, causal, mask, scale, forget, q_chunk=None, kv_chunk=None):
    return tra_weights(q, k, mask=mask, scale=scale, forget=forget) @ repeat_kv(v, q.shape[1])


def _chunked(q, k, v, *, causal, mask, scale, forget, q_chunk, kv_chunk):
    check_key_scores("forget", q, k, forget)
    check_int("q_chunk", q_chunk)
    check_int("kv_chunk", kv_chunk)
    return right_to_left_attention(q, k, v, F.logsigmoid(forget), rule=_TRA, mask=mask, scale=scale,
                                   q_chunk=q_chunk, kv_chunk=kv_chunk)


class _TRARule:
    """TRA's tiles (:class:`attnkit.kernels.right_to_left.SuffixRule`): the visible keys with a positive
    score are kept, with gate ``f_l`` (the key's log forget gate); the logits add the summed gates."""

    def block(self, q, log_forget):
        return log_forget

    def gates(self, s, visible, log_forget, ks, ke):
        kept = visible & (s > 0)
        return repeat_kv(log_forget[:, :, None, ks:ke], s.shape[1]) * kept, kept

    def logits(self, s, distance, log_forget):
        return s + distance


_TRA = _TRARule()


def _weights(q, k, v, *, causal, mask, scale, forget, q_chunk=None, kv_chunk=None):
    return tra_weights(q, k, mask=mask, scale=scale, forget=forget)


register(
    MechanismSpec(
        name="tra",
        family="softmax",
        papers=(PAPER,),
        patterns=frozenset({"causal-self", "causal-cross"}),
        reference=_reference,
        fast={"chunked": _chunked},
        step=scored_kv_cache_step(_chunked, "forget"),
        params=dict(CHUNK_PARAMS),
        inputs={"forget": TensorInput("(B, Hkv, N)", "each key's forget-gate logit g (log sigmoid(g) is its "
                                                     "step of contextual distance)")},
        tensor_inputs=key_score_inputs("forget"),
        tensor_inputs_per_token=("forget",),
        state_size=ScoredKVCache.size,
        summary="softmax over the keys with a positive score, plus the summed log forget gates of the kept "
                "keys between key and query (a contextual distance)",
        test_params={"q_chunk": 16, "kv_chunk": 24},
        weights=_weights,
    )
)
