"""BurstAttention: a two-level partition of exact softmax attention, across ranks and within each rank.

Sun, Zhao, Han, Yang, Liu, Shi & Sun, "BurstAttention: An Efficient Distributed
Attention Framework for Extremely Long Sequences" (2024). The sequence is
partitioned twice:

- **Global level** (across ranks, the paper's global attention optimisation): rank
  ``i`` holds ``Q_i, K_i, V_i``. Forward: over ``P`` steps the K/V partitions
  travel around the ring while each rank folds ``softmax(Q_i K_j^T) V_j`` into its
  output with the online softmax, keeping only ``O_i`` and ``lse_i`` (never
  ``Q K^T``):

      lse_i <- log(exp(lse_i) + exp(lse_ij)),  O_i <- exp(lse_i_old - lse_i) O_i + exp(lse_ij - lse_i) O_ij.

  Backward: the *queries' side* travels instead, and K/V stay home: with
  ``D_i = rowsum(dO_i * O_i)`` each rank passes ``(Q_j, dO_j, D_j, lse_j)``
  around the ring, recomputes ``P_ji = exp(Q_j K_i^T * scale - lse_j)`` and adds
  ``dV_i += P_ji^T dO_j``, ``dS_ji = P_ji * (dO_j V_i^T - D_j)``,
  ``dK_i += scale dS_ji^T Q_j`` locally, while ``dQ_j += scale dS_ji K_i``
  travels one step behind its queries and one last hop takes it home. Per
  step that is ``2 n d + 2 n`` values read and ``n d`` written, against ring
  attention's ``4 n d`` (K, V, dK, dV): the paper's lighter backward traffic.
- **Local level** (within a rank, the paper's local attention optimisation): each
  step's ``Q_i K_j^T`` is cut into ``tile_q x tile_k`` tiles, folded one tile at a
  time with the same online softmax, so a rank never holds more than one tile
  of scores (FlashAttention's tiling; here in PyTorch, tile by tile).

Masks (causal, sliding window, documents, any MaskMod) and score modifiers are
on global positions and skip empty tiles, as in :func:`ring_attention`; the
zigzag layout balances causal work. With GQA the queries' side is larger than
K/V (``H`` heads against ``Hkv``), so ring attention's backward moves fewer bytes.
"""
from __future__ import annotations

import torch

from . import blocks
from .ring import KVRing, Plan, input_grads


def burst_attention(q, k, v, *, group=None, layout: str = "zigzag", causal: bool = False, window: int | None = None,
                    doc_ids: torch.Tensor | None = None, mask_mod=None, score_mod=None, score_mod_inputs=(),
                    scale: float | None = None, overlap: bool = True, tile_q: int = 128,
                    tile_k: int = 256) -> torch.Tensor:
    """BurstAttention over a sequence sharded across ``group``; forward and backward.

    Arguments as :func:`attnkit.distributed.ring_attention`; ``tile_q`` / ``tile_k`` are the local
    level's tile (query rows x keys).
    """
    plan = Plan.of("burst_attention", q, k, v, group=group, layout=layout, causal=causal, window=window,
                   doc_ids=doc_ids, mask_mod=mask_mod, score_mod=score_mod, score_mod_inputs=score_mod_inputs,
                   scale=scale, chunk=tile_q, kv_chunk=tile_k)
    return _Burst.apply(q, k, v, plan, overlap, *plan.mod_inputs)


class _Burst(KVRing):

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        plan, g = ctx.plan, ctx.plan.g
        acc = out.dtype
        delta = (dout.to(acc) * out).sum(dim=-1)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        d_inputs = [None] * len(plan.mod_inputs)
        held = [q, dout, delta, lse]  # the queries' side of rank (rank - step) mod P
        dq, pending_dq = None, None
        for step in range(g.size):
            src = (g.rank - step) % g.size
            pending = g.shift(held, f"backward step {step}: passing Q, dO, D, lse") if step + 1 < g.size else None
            hq, hdout, hdelta, hlse = held
            dq = torch.zeros(q.shape, dtype=acc, device=q.device)
            for qs, ks, block in plan.pairs(src, g.rank):
                bq, bk, bv, bi = block.backward(hq[:, :, qs], k[:, :, ks], v[:, :, ks], hdout[:, :, qs],
                                                hlse[:, :, qs], hdelta[:, :, qs])
                dq[:, :, qs] += bq
                dk[:, :, ks] += bk
                dv[:, :, ks] += bv
                d_inputs = blocks.add_grads(d_inputs, bi)
            if pending_dq is not None:  # the previous rank's dQ for these same queries
                dq += pending_dq.wait()[0]
            if g.size > 1:  # after the last step this reaches the queries' owner
                pending_dq = g.shift([dq], f"backward step {step}: passing dQ")
            if pending is not None:
                held = pending.wait()
        if pending_dq is not None:
            dq = pending_dq.wait()[0]
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None,
                *input_grads(d_inputs, plan.mod_inputs))
