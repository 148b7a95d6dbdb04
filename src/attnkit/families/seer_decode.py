"""SeerAttention-R: a learned gate chooses the key blocks each decode query reads (Gao et al.,
"SeerAttention-R: Sparse Attention Adaptation for Long Reasoning", 2025).

The gate (AttnGate) is a plug-in beside a frozen model's attention. Per GQA group
(one kv head ``h`` and its ``g`` query heads), with blocks of ``B = block_size``
keys and ``d = d_gate``, for the query at position ``t`` (eq. 1-3 of the paper)::

    Q_gate(t)  = RoPE_t( W_q[h]^T concat_{i in group h} q~_{i,t} )                  (no pooling over tokens)
    K_gate(j)  = RoPE_{jB}( W_k[h]^T [max_{s in j} k~_s ; min_{s in j} k~_s ; mean_{s in j} k~_s] )
    S_t        = softmax_{j < c(t)}( Q_gate(t) . K_gate(j) / sqrt(d) ),      c(t) = floor(t / B)

``q~, k~`` are the queries and keys *before* the model's rotary embedding (the
paper's ``Q_nope, K_nope``; tensor inputs ``gate_queries``, ``gate_keys``; the
gate reads ``q`` and ``k`` as given when they are absent); ``RoPE`` is the gate's
own rotary embedding of width ``d`` (base ``rope_base``), at the query's position
and at the block's first position. ``K_gate`` of every complete block is the
compressed key cache: computed once, when the block completes. The query reads
its own (current) block ``c(t)``, causal inside, and the past blocks the gate
keeps: the top ``top_k - 1`` by ``S_t`` (a token budget of ``top_k * B``), or,
with ``threshold > 0``, every block with ``S_t,j > threshold``; then exact
softmax attention over the kept keys. All query heads of a group read the same
blocks (the paper's shared sparsity in a GQA group).

Training (:func:`decode_gate_target`, :func:`decode_gate_loss`; ``attnkit train
seer-r``): the base model frozen, the gate is fitted to the dense attention of
its group, ``KL(T_t || S_t)``, where ``T_t,j`` is the block-level attention of
block ``j < c(t)`` taken as the largest attention weight in the block
(``pool="max"``, the authors' kernel: 1-D max pooling of each row) or the
block's attention mass (``pool="sum"``), maximised over the group's heads and
normalised over the past blocks.

Readings where the paper leaves a choice (checked against the authors' code,
microsoft/SeerAttention ``decode_sparse``): ``W_q[h]`` maps the group's ``g``
concatenated queries (their "Qproj"), shape ``(Hkv, g D, d)``; ``W_k[h]`` is
``(Hkv, 3 D, d)``; the gate scores only complete past blocks (the training mask
of the authors' code) and the current block is always read and counts towards
``top_k``; block positions are block starts (the authors' training; their
inference rotates a completed block at its last position instead); the authors'
script also RMS-normalises ``Q_gate`` and ``K_gate`` (``use_qk_norm``), which the
paper's equations do not: not done here. Gate scores are computed in float64 and
ties go to the earlier block, so float32 and float64 calls choose the same
blocks. The choice is not differentiable: gradients reach q, k, v through the
exact attention; the gate learns from the distillation loss only.

Forms: ``reference`` (the gate over every (query, block) pair in float64 from
the equations, the element mask) and ``gathered`` (a call of at most 64 queries
gathers its blocks; a longer one runs the block-selection engine). The
incremental state is a :class:`~attnkit.state.BlockDigestKVCache`: every key and
value, ``K_gate`` of the complete blocks and the gate keys of the unfinished
block, so a decode step reads ``N d / B`` gate numbers and ``top_k`` blocks.
Under ``attnkit.capture`` an incremental call records its new queries' weights
over every key so far, zero outside the blocks the step chose.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels.gathered_keys import paged_attention
from ..kernels.positions import causal_mask, query_positions, repeat_kv
from ..kernels.selected_blocks import selected_block_attention
from ..masks.selection import block_selection
from ..params import Param, TensorInput
from ..positional.rope import RoPE
from ..reference import materialised_attention, materialised_weights
from ..registry import MechanismSpec, register
from ..state import BlockDigestKVCache
from ..validation import check_tensor

PAPER = "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning"


def _check(q, k, gate_q, gate_k, gate_queries, gate_keys):
    H, D, Hkv = q.shape[1], q.shape[3], k.shape[1]
    width = gate_q.shape[2] if isinstance(gate_q, torch.Tensor) and gate_q.ndim == 3 else -1
    check_tensor("gate_q", gate_q, (Hkv, H // Hkv * D, width), q, what="(kv_heads, group * head_dim, gate_dim)")
    check_tensor("gate_k", gate_k, (Hkv, 3 * D, width), q, what="(kv_heads, 3 * head_dim, gate_dim)")
    if width % 2:
        raise ValueError(f"gate_q and gate_k need an even gate_dim (the gate's rotary embedding), got {width}")
    if gate_queries is not None:
        check_tensor("gate_queries", gate_queries, tuple(q.shape), q, what="(B, H, Nq, D) queries before RoPE")
    if gate_keys is not None:
        check_tensor("gate_keys", gate_keys, tuple(k.shape[:3]) + (D,), q, what="(B, Hkv, Nk, D) keys before RoPE")


def _rotate(x, positions, base):
    """The gate's rotary embedding of ``x (..., n, d)`` at ``positions``, its tables made on ``x``'s device."""
    with torch.device(x.device):
        return RoPE(x.shape[-1], base=base).rotate(x, positions)


def gate_queries_of(q, gate_q, *, positions, rope_base) -> torch.Tensor:
    """``Q_gate (B, Hkv, Nq, d)``: each group's concatenated queries through ``W_q``, rotated at ``positions``."""
    B, H, Nq, D = q.shape
    Hkv = gate_q.shape[0]
    grouped = q.unflatten(1, (Hkv, H // Hkv)).permute(0, 1, 3, 2, 4).flatten(3)  # (B, Hkv, Nq, g D)
    return _rotate(grouped @ gate_q, positions, rope_base)


def gate_keys_of(keys, gate_k, *, block_size, first_block, rope_base) -> torch.Tensor:
    """``K_gate (B, Hkv, m, d)`` of the complete blocks in ``keys (B, Hkv, m B, D)``, the first being block
    ``first_block``: max-, min- and mean-pooled keys through ``W_k``, rotated at each block's first position."""
    B, Hkv, N, D = keys.shape
    blocks = keys.reshape(B, Hkv, N // block_size, block_size, D)
    pooled = torch.cat([blocks.amax(3), blocks.amin(3), blocks.mean(3)], dim=-1)
    projected = pooled @ gate_k
    starts = (torch.arange(N // block_size, device=keys.device) + first_block) * block_size
    return _rotate(projected, starts, rope_base)


def gate_logits(q_gate, k_gate, positions, *, block_size: int) -> torch.Tensor:
    """``Q_gate . K_gate / sqrt(d)`` ``(B, Hkv, Nq, n)`` for queries at ``positions``; blocks at or after a query's own
    block are ``-inf``."""
    logits = q_gate @ k_gate.transpose(-1, -2) / math.sqrt(q_gate.shape[-1])
    past = torch.arange(k_gate.shape[2], device=q_gate.device) < (positions // block_size)[:, None]
    return logits.masked_fill(~past, float("-inf"))


def chosen_blocks(logits, positions, *, block_size, top_k, threshold):
    """Blocks ``(B, Hkv, Nq, k)`` (slot 0: the query's own block) and their use, from the gate's logits."""
    B, Hkv, Nq, n = logits.shape
    if threshold > 0:
        kept = (logits.softmax(-1).nan_to_num(0.0) > threshold) & (logits > float("-inf"))
        index = torch.arange(n, device=logits.device).expand(B, Hkv, Nq, n)
    else:
        score, index = logits.topk(min(top_k - 1, n), dim=-1)
        kept = score > float("-inf")
    current = (positions // block_size).expand(B, Hkv, Nq).unsqueeze(-1)
    blocks = torch.cat([current, index], dim=-1)
    valid = torch.cat([torch.ones_like(current, dtype=torch.bool), kept], dim=-1)
    return blocks, valid


def _choose(q_gate, k_gate, kv_len, *, block_size, top_k, threshold, chunk: int = 1024):
    """Every query's blocks ``(B, Hkv, Nq, k)`` and their use, from ``Q_gate`` and the compressed keys, in chunks."""
    positions = query_positions(q_gate.shape[2], kv_len, q_gate.device)
    parts = []
    for c0 in range(0, q_gate.shape[2], chunk):
        pos = positions[c0:c0 + chunk]
        logits = gate_logits(q_gate[:, :, c0:c0 + chunk], k_gate, pos, block_size=block_size)
        parts.append(chosen_blocks(logits, pos, block_size=block_size, top_k=top_k, threshold=threshold))
    return tuple(torch.cat(p, dim=2) for p in zip(*parts))


def _attend(q, k, v, blocks, valid, *, scale, block_size, few: int = 64):
    """Attention over the chosen blocks: at most ``few`` queries gather them, more run the block-selection engine."""
    H, Nq, Nk = q.shape[1], q.shape[2], k.shape[2]
    if Nq > few:
        sel = block_selection(blocks, valid, block_q=1, block_k=block_size, q_len=Nq, kv_len=Nk)
        return selected_block_attention(q, k, v, sel, scale=scale, causal=True)
    group = H // k.shape[1]
    return paged_attention(q, k, v, blocks.repeat_interleave(group, dim=1), valid.repeat_interleave(group, dim=1),
                           page=block_size, scale=scale)


def _gate_inputs(q, k, gate_q, gate_k, gate_queries, gate_keys, kv_len, *, block_size, rope_base):
    """``Q_gate`` of the queries and ``K_gate`` of the complete blocks among ``k``, in float64 (no gradient)."""
    queries = (q if gate_queries is None else gate_queries).detach().double()
    keys = (k if gate_keys is None else gate_keys).detach().double()
    positions = query_positions(q.shape[2], kv_len, q.device)
    complete = keys.shape[2] // block_size * block_size
    q_gate = gate_queries_of(queries, gate_q.detach().double(), positions=positions, rope_base=rope_base)
    k_gate = gate_keys_of(keys[:, :, :complete], gate_k.detach().double(), block_size=block_size, first_block=0,
                          rope_base=rope_base)
    return q_gate, k_gate.to(q.dtype).double()  # the compressed cache holds K_gate in the input dtype


def seer_r_gathered(q, k, v, *, causal, mask, scale, block_size, top_k, threshold, rope_base, gate_q, gate_k,
                    gate_queries=None, gate_keys=None):
    _check(q, k, gate_q, gate_k, gate_queries, gate_keys)
    blocks, valid = _selection(q, k, gate_q, gate_k, gate_queries, gate_keys, block_size=block_size, top_k=top_k,
                               threshold=threshold, rope_base=rope_base)
    return _attend(q, k, v, blocks, valid, scale=scale, block_size=block_size)


def _selection(q, k, gate_q, gate_k, gate_queries, gate_keys, *, block_size, top_k, threshold, rope_base):
    """Every query's blocks ``(B, Hkv, Nq, k)`` and their use, as the fast form chooses them."""
    q_gate, k_gate = _gate_inputs(q, k, gate_q, gate_k, gate_queries, gate_keys, k.shape[2], block_size=block_size,
                                  rope_base=rope_base)
    return _choose(q_gate, k_gate, k.shape[2], block_size=block_size, top_k=top_k, threshold=threshold)


@torch.no_grad()
def attended(q, k, rows, *, scale, block_size, top_k, threshold, rope_base, gate_q, gate_k, gate_queries=None,
             gate_keys=None, **_):
    """The keys query ``rows`` read ``(B, H, len(rows), Nk)`` and the density of the whole call (``selection_report``)."""
    B, H, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    blocks, valid = _selection(q, k, gate_q, gate_k, gate_queries, gate_keys, block_size=block_size, top_k=top_k,
                               threshold=threshold, rope_base=rope_base)
    positions = query_positions(Nq, Nk, q.device)
    read = (valid[..., 1:].sum(-1) * block_size + positions % block_size + 1).double()  # (B, Hkv, Nq)
    density = float(read.sum() / (B * Hkv * (positions + 1).sum()))
    pairs = _pairs(blocks[:, :, rows], valid[:, :, rows], positions[rows], Nk, block_size)
    return pairs.repeat_interleave(H // Hkv, dim=1), density


def _pairs(blocks, valid, positions, kv_len, block_size):
    """Bool ``(B, Hkv, Nq, kv_len)``: the keys of each query's chosen blocks, up to the query (causal)."""
    n = -(-kv_len // block_size)
    hit = torch.zeros(*blocks.shape[:3], n + 1, dtype=torch.bool, device=blocks.device)
    hit.scatter_(3, torch.where(valid, blocks, n), True)
    keys = hit[..., :n].repeat_interleave(block_size, dim=3)[..., :kv_len]
    return keys & (torch.arange(kv_len, device=blocks.device) <= positions[:, None])


def reference_mask(q, k, gate_q, gate_k, *, block_size, top_k, threshold, rope_base, gate_queries=None,
                   gate_keys=None) -> torch.Tensor:
    """The (query, key) pairs SeerAttention-R reads, ``(B, H, Nq, Nk)``, from the equations in float64."""
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g, d = H // Hkv, gate_q.shape[2]
    queries = (q if gate_queries is None else gate_queries).detach().double()
    keys = (k if gate_keys is None else gate_keys).detach().double()
    n = Nk // block_size
    pos = query_positions(Nq, Nk, q.device)
    q_gate = torch.stack([torch.cat([queries[:, h * g + i] for i in range(g)], dim=-1) @ gate_q[h].double()
                          for h in range(Hkv)], dim=1)
    q_gate = _rotate(q_gate, pos, rope_base)
    pooled = []
    for j in range(n):
        block = keys[:, :, j * block_size:(j + 1) * block_size]
        pooled.append(torch.cat([block.max(2).values, block.min(2).values, block.mean(2)], dim=-1))
    k_gate = (torch.stack(pooled, dim=2) if n else keys.new_zeros(B, Hkv, 0, 3 * D)) @ gate_k.double()
    k_gate = _rotate(k_gate, torch.arange(n, device=q.device) * block_size, rope_base)
    logits = torch.einsum("bhqd,bhjd->bhqj", q_gate, k_gate) / math.sqrt(d)
    past = torch.arange(n, device=q.device) < (pos // block_size)[:, None]
    if threshold > 0:
        routed = past & (logits.masked_fill(~past, float("-inf")).softmax(-1).nan_to_num(0.0) > threshold)
    else:
        order = logits.masked_fill(~past, float("-inf")).sort(dim=-1, descending=True, stable=True).indices
        routed = past & (order.argsort(-1) < top_k - 1)
    key_block = torch.arange(Nk, device=q.device) // block_size
    in_routed = F.pad(routed, (0, 1))[..., key_block.clamp(max=n)] & (key_block < n)
    current = key_block == (pos // block_size)[:, None]
    return (in_routed.repeat_interleave(g, dim=1) | current) & causal_mask(Nq, Nk, q.device)


def _reference(q, k, v, *, causal, mask, scale, block_size, top_k, threshold, rope_base, gate_q, gate_k,
               gate_queries=None, gate_keys=None):
    _check(q, k, gate_q, gate_k, gate_queries, gate_keys)
    kept = reference_mask(q, k, gate_q, gate_k, block_size=block_size, top_k=top_k, threshold=threshold,
                          rope_base=rope_base, gate_queries=gate_queries, gate_keys=gate_keys)
    return materialised_attention(q, k, v, causal=False, mask=kept, scale=scale)


def _appended(k, v, state, *, block_size, rope_base, gate_k, gate_keys):
    """The state after this call's keys: every key and value, and ``K_gate`` of each block as it completes."""
    side = (k if gate_keys is None else gate_keys).detach()

    def summarise(rows, first):
        with torch.no_grad():
            return gate_keys_of(rows.double(), gate_k.detach().double(), block_size=block_size, first_block=first,
                                rope_base=rope_base).to(rows.dtype)

    if state is None:
        return BlockDigestKVCache.start(k, v, side, block=block_size, summarise=summarise)
    return state.append(k, v, side, summarise)


def _step_choice(q, state, *, block_size, top_k, threshold, rope_base, gate_q, gate_queries):
    """Every new query's blocks ``(B, Hkv, Nq, k)`` and their use, from the compressed keys of ``state``."""
    queries = (q if gate_queries is None else gate_queries).detach().double()
    positions = query_positions(q.shape[2], state.length, q.device)
    q_gate = gate_queries_of(queries, gate_q.detach().double(), positions=positions, rope_base=rope_base)
    return _choose(q_gate, state.digest().double(), state.length, block_size=block_size, top_k=top_k,
                   threshold=threshold)


def _step(q, k, v, state, *, causal, mask, scale, block_size, top_k, threshold, rope_base, gate_q, gate_k,
          gate_queries=None, gate_keys=None):
    _check(q, k, gate_q, gate_k, gate_queries, gate_keys)
    state = _appended(k, v, state, block_size=block_size, rope_base=rope_base, gate_k=gate_k, gate_keys=gate_keys)
    blocks, valid = _step_choice(q, state, block_size=block_size, top_k=top_k, threshold=threshold,
                                 rope_base=rope_base, gate_q=gate_q, gate_queries=gate_queries)
    out = _attend(q, state.k, state.v, blocks, valid, scale=scale, block_size=block_size)
    return out, state


def _read(k, v, state, mask, *, q, block_size, top_k, threshold, rope_base, gate_q, gate_k, gate_queries=None,
          gate_keys=None):
    """What a step reads, for ``attnkit.capture``: every key so far, and as the mask the (query, key) pairs of
    the blocks the gate chose for each new query (the step's own choice, from its compressed keys)."""
    _check(q, k, gate_q, gate_k, gate_queries, gate_keys)
    state = _appended(k, v, state, block_size=block_size, rope_base=rope_base, gate_k=gate_k, gate_keys=gate_keys)
    blocks, valid = _step_choice(q, state, block_size=block_size, top_k=top_k, threshold=threshold,
                                 rope_base=rope_base, gate_q=gate_q, gate_queries=gate_queries)
    positions = query_positions(q.shape[2], state.length, q.device)
    pairs = _pairs(blocks, valid, positions, state.length, block_size).repeat_interleave(q.shape[1] // k.shape[1], 1)
    return state.k, state.v, pairs, torch.arange(state.length, device=q.device)


_step.read = _read


def _weights(q, k, v, *, causal, mask, scale, block_size, top_k, threshold, rope_base, gate_q, gate_k,
             gate_queries=None, gate_keys=None):
    """The softmax weights over the pairs read: the reference's choice in a one-shot call (which takes no mask);
    in an incremental call under ``attnkit.capture``, ``mask`` is the pairs the step read (:func:`_read`)."""
    if mask is None:
        _check(q, k, gate_q, gate_k, gate_queries, gate_keys)
        mask = reference_mask(q, k, gate_q, gate_k, block_size=block_size, top_k=top_k, threshold=threshold,
                              rope_base=rope_base, gate_queries=gate_queries, gate_keys=gate_keys)
    return materialised_weights(q, k, causal=False, mask=mask, scale=scale)


def decode_gate_target(q, k, *, block_size: int, pool: str = "max", scale=None, chunk: int = 512) -> torch.Tensor:
    """The distillation target ``T (B, Hkv, N, n)`` from the dense causal attention of ``q (B, H, N, D)``, ``k``.

    ``T_t,j`` for each complete block ``j`` before the query's own block: the largest attention weight in the block
    (``pool="max"``) or its attention mass (``"sum"``), maximised over the GQA group's heads, normalised over
    ``j``; rows without a past block are zero. No gradient.
    """
    if pool not in ("max", "sum"):
        raise ValueError(f"pool must be 'max' or 'sum', got {pool!r}")
    with torch.no_grad():
        B, H, N, D = q.shape
        Hkv = k.shape[1]
        n = N // block_size
        scale = D**-0.5 if scale is None else scale
        keys = repeat_kv(k, H)
        rows = []
        for c0 in range(0, N, chunk):
            pos = torch.arange(c0, min(N, c0 + chunk), device=q.device)
            s = (q[:, :, c0:c0 + chunk] @ keys.transpose(-1, -2)) * scale
            p = s.masked_fill(torch.arange(N, device=q.device) > pos[:, None], float("-inf")).softmax(-1)
            tiles = p[..., : n * block_size].unflatten(-1, (n, block_size))
            per_block = tiles.amax(-1) if pool == "max" else tiles.sum(-1)
            per_block = per_block.unflatten(1, (Hkv, H // Hkv)).amax(2)  # (B, Hkv, c, n)
            past = torch.arange(n, device=q.device) < (pos // block_size)[:, None]
            rows.append(per_block * past)
        target = torch.cat(rows, dim=2)
        total = target.sum(-1, keepdim=True)
        return torch.where(total > 0, target / total.clamp(min=1e-30), torch.zeros_like(target))


def decode_gate_loss(q, k, gate_q, gate_k, *, block_size: int, rope_base: float = 10000.0, pool: str = "max",
                     gate_queries=None, gate_keys=None, loss_from: float = 0.5, scale=None) -> torch.Tensor:
    """``KL(T_t || S_t)`` averaged over (batch, kv head, query ``t >= loss_from N`` with a past block): the gate's
    training loss. ``q, k`` are what attention reads (the target); ``gate_queries, gate_keys`` what the gate reads
    (default ``q, k``). Gradients reach ``gate_q`` and ``gate_k`` only."""
    target = decode_gate_target(q, k, block_size=block_size, pool=pool, scale=scale)
    N = q.shape[2]
    queries = (q if gate_queries is None else gate_queries).detach()
    keys = (k if gate_keys is None else gate_keys).detach()
    pos = torch.arange(N, device=q.device)
    q_gate = gate_queries_of(queries, gate_q, positions=pos, rope_base=rope_base)
    n = N // block_size
    k_gate = gate_keys_of(keys[:, :, : n * block_size], gate_k, block_size=block_size, first_block=0,
                          rope_base=rope_base)
    logits = gate_logits(q_gate, k_gate, pos, block_size=block_size)
    rows = (pos >= max(block_size, int(loss_from * N)))
    log_s = logits[:, :, rows].log_softmax(-1)
    t = target[:, :, rows]
    kl = torch.where(t > 0, t * (t.clamp(min=1e-30).log() - log_s), torch.zeros_like(t))
    return kl.sum(-1).mean() if rows.any() else logits.sum() * 0.0


def seer_r_inputs(q, k, v, generator=None, *, gate_dim: int = 8) -> dict:
    """Example gate weights ``gate_q (Hkv, g D, d)``, ``gate_k (Hkv, 3 D, d)`` and gate queries/keys (q, k moved)."""
    H, D, Hkv = q.shape[1], q.shape[3], k.shape[1]
    g = H // Hkv if Hkv else 1
    wq = torch.randn(Hkv, g * D, gate_dim, generator=generator, dtype=q.dtype) / math.sqrt(g * D)
    wk = torch.randn(Hkv, 3 * D, gate_dim, generator=generator, dtype=q.dtype) / math.sqrt(3 * D)
    shift_q = torch.randn(q.shape, generator=generator, dtype=q.dtype)
    shift_k = torch.randn(k.shape[:3] + (D,), generator=generator, dtype=q.dtype)
    return {"gate_q": wq.to(q.device), "gate_k": wk.to(q.device),
            "gate_queries": (q.detach() + shift_q.to(q.device)), "gate_keys": (k.detach() + shift_k.to(q.device))}


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, *, block_size=64, gate_k=None, **_):
    gate_dim = head_dim if gate_k is None else gate_k.shape[-1]
    blocks, rest = divmod(seq_len, block_size)
    return batch * kv_heads * (seq_len * (head_dim + (v_dim or head_dim)) + blocks * gate_dim + rest * head_dim)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, block_size=64, top_k=64, **_):
    pos = torch.arange(kv_len - q_len, kv_len)
    pairs = int((pos % block_size + 1 + torch.clamp(pos // block_size, max=top_k - 1) * block_size).sum())
    gate = 2 * batch * heads * q_len * (kv_len // block_size) * head_dim
    return 4 * batch * heads * pairs * head_dim + gate


register(MechanismSpec(
    name="seer_attention_r",
    family="training-free-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"gathered": seer_r_gathered},
    step=_step,
    params={"block_size": Param(64, int, "keys per gated block; the gate scores the complete blocks before the "
                                         "query's own, each rotated at its first position", low=1),
            "top_k": Param(64, int, "blocks each query reads: its own block (always read, causal inside) and the "
                                    "top_k - 1 past blocks of highest gate score (token budget top_k * block_size)",
                           low=1),
            "threshold": Param(0.0, float, "if > 0: read the past blocks whose gate score (softmax over the past "
                                           "blocks) exceeds it, instead of the top_k", low=0.0, high=1.0,
                               high_open=True),
            "rope_base": Param(10000.0, float, "base of the gate's rotary embedding", low=0.0, low_open=True)},
    inputs={"gate_q": TensorInput("(Hkv, g D, d_gate)", "AttnGate's map of each GQA group's concatenated queries "
                                                        "(one gate query per group, the authors' Qproj; no RMS norm "
                                                        "on the gate's q and k, as the paper's equations)"),
            "gate_k": TensorInput("(Hkv, 3 D, d_gate)", "AttnGate's map of each block's max-, min- and mean-pooled keys"),
            "gate_queries": TensorInput("(B, H, N, D)", "the queries the gate reads (before the model's RoPE); "
                                                        "q when absent", required=False),
            "gate_keys": TensorInput("(B, Hkv, N, D)", "the keys the gate pools (before the model's RoPE); "
                                                       "k when absent", required=False)},
    tensor_inputs=seer_r_inputs,
    tensor_inputs_per_token=("gate_queries", "gate_keys"),
    test_params={"block_size": 4, "top_k": 3},
    supports_mask=False,
    extra={"attended": attended},
    weights=_weights,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N d_gate / block_size + top_k block_size d) per query",
    summary="decode: a learned gate over a compressed key cache (pooled keys per block) picks each GQA group's "
            "top-k blocks (self-distilled)",
))
