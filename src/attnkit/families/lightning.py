"""Lightning attention: decayed causal linear attention computed block by block.

Qin et al., "Various Lengths, Constant Speed: Efficient Language Modeling with
Lightning Attention" (TransNormerLLM, 2024) and "Lightning Attention-2: A Free
Lunch for Handling Unlimited Sequence Lengths in Large Language Models" (2024):
causal linear attention without a cumulative sum, split into an intra-block
part (the masked matrix ``(Q_t K_t^T * M) V_t``) and an inter-block part (the
state ``KV`` carried across blocks, decayed by ``lambda^B``), tiled in forward
and backward. The per-head decay is ``lambda_h = exp(-decay_scale * m_h)``
with ``m_h`` the ALiBi slopes (TransNormerLLM sets ``decay_scale = 1 - l/L``
for layer ``l`` of ``L``). Outputs are unnormalised (TransNormerLLM normalises
after attention with SRMSNorm, in the layer). ``chunk_size`` is the block size.
"""
from __future__ import annotations

from ..params import Param
from ..scores.alibi import alibi_slopes
from ..builders.linear_pipeline import register_linear_mechanism
from ..builders.stateful import CAUSAL_ONLY
from ..validation import check_float

PAPERS = (
    "Various Lengths, Constant Speed: Efficient Language Modeling with Lightning Attention",
    "Lightning Attention-2: A Free Lunch for Handling Unlimited Sequence Lengths in Large Language Models",
)


def lightning_features(q, k, v, *, scale, decay_scale):
    check_float("decay_scale", decay_scale, minimum=0)
    B, H, N, _ = q.shape
    g = (-decay_scale * alibi_slopes(H, q.device)).to(q.dtype)[None, :, None].expand(B, H, N)
    return q * scale, k, v, g


register_linear_mechanism(
    "lightning",
    family="linear-decay",
    papers=PAPERS,
    prepare=lightning_features,
    normalise=False,
    params={"decay_scale": Param(1.0, float, "multiplies the per-head ALiBi decay slopes (TransNormerLLM's 1 - l/L)", low=0)},
    patterns=CAUSAL_ONLY,
    summary="TransNormerLLM lightning attention: intra-block masked + inter-block decayed state, ALiBi-slope decays",
)
