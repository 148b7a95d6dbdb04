"""PaTH attention's chunked form: a UT transform per chunk, then softmax over carried keys.

For a chunk of ``C`` tokens with directions ``W`` ``(C, D)`` and strengths ``beta``, the product of its
transforms, applied to a vector ``x`` in token order, is ``x - W^T c`` with the coefficients solving the
unit lower triangular system ``(I + L) c = Diag(beta) W x``, ``L_sr = beta_s w_s . w_r`` (``r < s``): the
UT transform of the delta rule. With ``T = (I + L)^-1`` this gives, in matmuls for all chunks at once:

- the chunk's product ``P = I - W^T T Diag(beta) W`` (a key ``k`` carried through it is
  ``k - W^T (T Diag(beta) W) k``);
- each key carried to the chunk's end, ``K~ = K - C_K^T W`` with ``C_K = T Diag(beta) tril_1(W K^T)``;
- each query carried back to the chunk's start, ``Q~ = Q - tril(Q W^T) T Diag(beta) W``;
- the scores inside the chunk, ``tril(Q K^T) - tril(Q W^T) C_K`` (for ``j <= i`` the coefficients of
  ``C_K`` past ``i`` do not enter: the system is triangular).

Across chunks, a query's score for an earlier chunk's key is ``Q~_i . k`` with ``k`` the key carried
to the end of the previous chunk: the loop keeps every earlier key carried that far (one rank-``C``
update of all of them per chunk, O(N D C) per chunk, as much work as the scores) and runs one softmax
over the earlier keys and the chunk's own. Work O(N^2 D), memory O(N D + C N).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..delta_rule.chunked import solve_unit_lower
from ...kernels.nonfinite import hold_back_nonfinite, poison


def path_chunked(q, k, v, w, beta, g, K, V, decay, *, scale, chunk_size):
    """``(out, K, V, decay)`` equal to :func:`attnkit.families.path.path_parallel`; k, v per query head."""
    B, H, N, D = q.shape
    C, P = chunk_size, K.shape[2]
    (k, v, w, beta, g), poisoned = hold_back_nonfinite(k, v, w, beta, g)  # a NaN stays in its token's future
    if g is None:
        g = q.new_zeros(B, H, N)
    pad = -N % C
    n = (N + pad) // C
    # zero tokens after the end: H = I, zero keys and values, which no real query sees
    chunks = lambda t: F.pad(t, (0, 0, 0, pad)).reshape(B, H, n, C, t.shape[-1])  # noqa: E731
    q, k, v, w = (chunks(t) for t in (q, k, v, w))
    beta, gate = (chunks(t.unsqueeze(-1)) for t in (beta, g))
    gate = gate.cumsum(dim=3)  # G_i - G_{chunk start}, inclusive
    earlier = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    seen = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    L = beta * (w @ w.transpose(-1, -2))
    weights_to_keys = beta * (w @ k.transpose(-1, -2)).masked_fill(~earlier, 0)
    TbW, C_K = solve_unit_lower(L, beta * w, weights_to_keys)
    QW = (q @ w.transpose(-1, -2)).masked_fill(~seen, 0)
    q_start = q - QW @ TbW
    k_end = k - C_K.transpose(-1, -2) @ w
    local = scale * (q @ k.transpose(-1, -2) - QW @ C_K) + (gate - gate.transpose(-1, -2))
    local = local.masked_fill(~seen, float("-inf"))
    gate_to_end = gate[..., -1:, :] - gate  # G_end - G_j

    outs = []
    for c in range(n):
        inter = scale * q_start[:, :, c] @ K.transpose(-1, -2) + decay[:, :, None, :] + gate[:, :, c]
        probs = torch.cat([inter, local[:, :, c]], dim=-1).softmax(dim=-1)
        outs.append(probs[..., : K.shape[2]] @ V + probs[..., K.shape[2]:] @ v[:, :, c])
        K = torch.cat([K - (K @ TbW[:, :, c].transpose(-1, -2)) @ w[:, :, c], k_end[:, :, c]], dim=2)
        V = torch.cat([V, v[:, :, c]], dim=2)
        decay = torch.cat([decay + gate[:, :, c, -1], gate_to_end[:, :, c, :, 0]], dim=2)
    out = torch.cat(outs, dim=2)[:, :, :N]
    end = P + N
    out, (K, V, decay) = poison(out, (K[:, :, :end], V[:, :, :end], decay[:, :, :end]), poisoned)
    return out, K, V, decay
