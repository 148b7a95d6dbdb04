"""MoBA: Mixture of Block Attention (Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs").

The keys are cut into blocks ``I_i = [(i-1) B + 1, i B]`` of ``B = block_size``
tokens. A parameter-free gate scores each block for each query by the query's
affinity to the block's mean key, and the query attends to its top-k blocks::

    s_i = <q, mean_pool(K[I_i])>
    g_i = 1 if s_i in Topk({s_j}, k) else 0
    MoBA(q, K, V) = Softmax(q K[I]^T / sqrt(d)) V[I],   I = union of I_i with g_i = 1

Causality (the paper's section 2.2): a query never routes to a block in its
future (``s_i = -inf`` there), and always routes to its *current* block, inside
which the causal mask applies. So ``k`` counts the current block: the query
takes its current block and the ``k - 1`` best complete blocks before it (all
of them while there are fewer), as the authors' ``moba_efficient`` does.

Conventions: one selection per query head (a GQA group's heads route alone;
the mean key is the head's kv head's); gate scores are computed in float64 and
ties go to the earlier block, so a float32 and a float64 call select the same
blocks; the selection is not differentiable (the paper's gate has no
parameters and no gradient).

Forms: ``reference`` (gates and mask materialised, float64-exact softmax) and
``selected_blocks`` (the run-time block selection kernel, one selection per
token and head: ``O(N k B)`` time, ``O(N)`` memory); incremental decode reruns
the fast form against the KV cache (the gates of the cached blocks do not
change, since only complete blocks are pooled).
"""
from __future__ import annotations

import torch

from ..kernels.positions import query_positions, repeat_kv
from ..kernels.selected_blocks import selected_block_attention
from ..masks.selection import BlockSelection, block_selection
from ..reference import materialised_attention
from ..params import Param
from ..registry import MechanismSpec, register
from ..validation import check_int
from ..builders.kv_cache_step import kv_cache_step

PAPER = "MoBA: Mixture of Block Attention for Long-Context LLMs"


def _check(block_size, top_k):
    check_int("block_size", block_size)
    check_int("top_k", top_k)


def moba_selection(q, k, *, block_size: int, top_k: int, chunk: int = 4096) -> BlockSelection:
    """Each query's blocks: its current block, then up to ``top_k - 1`` complete past blocks by gate score."""
    _check(block_size, top_k)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    n = Nk // block_size  # complete blocks: the only ones a gate can pick
    pooled = repeat_kv(k[:, :, : n * block_size].reshape(B, k.shape[1], n, block_size, D).double().mean(3), H)
    current = query_positions(Nq, Nk, q.device) // block_size
    picks = min(top_k - 1, n)
    chosen, used = [], []
    for c0 in range(0, Nq, chunk):
        gate = q[:, :, c0 : c0 + chunk].double() @ pooled.transpose(-1, -2)
        past = torch.arange(n, device=q.device) < current[c0 : c0 + chunk, None]
        gate = gate.masked_fill(~past, float("-inf"))
        score, index = gate.sort(dim=-1, descending=True, stable=True)
        chosen.append(index[..., :picks])
        used.append(score[..., :picks] > float("-inf"))
    blocks = torch.cat([current.expand(B, H, Nq).unsqueeze(-1), torch.cat(chosen, dim=2)], dim=-1)
    valid = torch.cat([torch.ones(B, H, Nq, 1, dtype=torch.bool, device=q.device), torch.cat(used, dim=2)], dim=-1)
    return block_selection(blocks, valid, block_q=1, block_k=block_size, q_len=Nq, kv_len=Nk)


def reference_mask(q, k, *, block_size: int, top_k: int) -> torch.Tensor:
    """The (query, key) pairs MoBA attends to, ``(B, H, Nq, Nk)``, straight from the gate equations."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    n = Nk // block_size
    keys = repeat_kv(k, H).double()
    pooled = keys[:, :, : n * block_size].reshape(B, H, n, block_size, D).mean(3)
    gate = q.double() @ pooled.transpose(-1, -2)  # s_i
    qpos = query_positions(Nq, Nk, q.device)
    current = qpos // block_size
    past = torch.arange(n, device=q.device) < current[:, None]
    gate = gate.masked_fill(~past, float("-inf"))
    rank = gate.sort(dim=-1, descending=True, stable=True).indices.argsort(dim=-1)
    routed = past & (rank < top_k - 1)  # g_i, besides the current block
    key_block = torch.arange(Nk, device=q.device) // block_size
    in_routed = torch.cat([routed, routed.new_zeros(B, H, Nq, 1)], dim=-1)[..., key_block.clamp(max=n)]
    in_routed = in_routed & (key_block < n)
    return (in_routed | (key_block == current[:, None])) & (torch.arange(Nk, device=q.device) <= qpos[:, None])


def _reference(q, k, v, *, causal, mask, scale, block_size, top_k):
    _check(block_size, top_k)
    allowed = reference_mask(q, k, block_size=block_size, top_k=top_k)
    return materialised_attention(q, k, v, causal=False, mask=allowed, scale=scale)


def _fast(q, k, v, *, causal, mask, scale, block_size, top_k):
    sel = moba_selection(q, k, block_size=block_size, top_k=top_k)
    return selected_block_attention(q, k, v, sel, scale=scale, causal=True)


def moba_pairs(q_len: int, kv_len: int, block_size: int, top_k: int) -> int:
    """(query, key) pairs per head: the causal part of the current block plus up to ``top_k - 1`` whole blocks."""
    pos = torch.arange(kv_len - q_len, kv_len)
    past = torch.clamp(pos // block_size, max=top_k - 1)
    return int((pos % block_size + 1 + past * block_size).sum())


def _flops(batch, heads, q_len, kv_len, head_dim, causal, block_size=512, top_k=3, **_):
    gates = 2 * batch * heads * q_len * (kv_len // block_size) * head_dim
    return 4 * batch * heads * moba_pairs(q_len, kv_len, block_size, top_k) * head_dim + gates


register(MechanismSpec(
    name="moba",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"selected_blocks": _fast},
    step=kv_cache_step(_fast),
    params={"block_size": Param(512, int, "keys per block", low=1),
            "top_k": Param(3, int, "blocks per query, its current block included", low=1)},
    test_params={"block_size": 8, "top_k": 3},
    supports_mask=False,
    flops=_flops,
    complexity="O(N top_k block_size)",
    summary="each query attends to its current block and its top-k past blocks by q . mean(block keys)",
))
