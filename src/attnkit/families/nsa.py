"""NSA: Native Sparse Attention (Yuan et al., "Native Sparse Attention: Hardware-Aligned and Natively
Trainable Sparse Attention", DeepSeek 2025).

Each query ``q_t`` attends through three branches, mixed by learned gates::

    o_t = sum_{c in {cmp, slc, win}} g_t^c Attn(q_t, K~_t^c, V~_t^c)              (5)

- compression: blocks of ``l`` keys every ``d`` tokens, each mapped to one key by
  a learned MLP ``phi`` with an intra-block position encoding::

      K~_t^cmp = { phi(k_{id+1 : id+l}) | 0 <= i <= floor((t - l) / d) }             (7)

- selection: the blocks of ``l'`` keys scored by the compression branch's own
  attention weights ``p_t^cmp = Softmax(q_t^T K~_t^cmp)`` (8), mapped to the
  selection blocks (9), summed over the query heads of a GQA group (10); the
  group's tokens attend to the top-``n`` blocks' keys (11-12);
- sliding window: the last ``w`` keys ``k_{t-w+1 : t}``.

"To further prevent shortcut learning across attention branches ..., we provide
independent keys and values for three branches" (section 3.3.3): the tensor inputs
``k_cmp, v_cmp`` (what ``phi`` compresses) and ``k_win, v_win`` (the window's keys
and values), each ``(B, Hkv, N, .)`` like ``k`` and ``v``, which then serve the
selection branch alone. Left out, the call's ``k`` and ``v`` serve those branches
too (one projection shared by the three).

Defaults are the paper's: ``l = 32, d = 16, l' = 64, n = 16`` (the initial block
and two local blocks always among the 16), ``w = 512``.

Conventions where the paper leaves a choice (they do not change the equations):
``phi`` is ``W2 relu(W1 vec(block + P))``, one MLP for keys and one for values
shared by all heads, ``l`` given by the position encoding's length (the tensor
inputs ``k_pos (l, D), k_w1 (l D, hidden), k_w2 (hidden, D)`` and the same for
values); equation 9 is read with 0-based block numbers (each compressed block
counts once per stride segment it shares with the selection block); the local
blocks are the query's block and the one before it; a compressed block is
visible once its last key is; ties between block scores go to the earlier
block (so a float32 and a float64 call choose the same blocks unless two scores
are within float32 rounding of each other); the gates
``gates (B, H, N, 3)`` (compression, selection, window) are given already
squashed (inside ``attnkit.nn.Attention(..., mechanism="nsa")``, the module
:class:`attnkit.nn.inputs.nsa.NSAInputs` computes them with a linear map and a
sigmoid). Top-n is not differentiable; gradients reach the compression MLP
through the compression branch and the gates.

Forms: ``reference`` (every branch materialised) and ``sparse`` (``phi`` applied to the
stride segments, not to copies of the overlapping blocks; the compression
branch in query chunks, its weights computed once for its output and the block
importance, only the log-sum-exp kept for the backward; the selection branch on the
run-time block selection kernel, one selection per token and kv group; the
window on the sliding-window kernel, in query tiles each reading one slice of keys; both kernels add their
gated outputs in place into the compression branch's gated output): ``O(N (N/d + n l' + w))`` time, ``O(N)``
memory. Up to ``DENSE_PAIRS`` (query, key) pairs per head (512 tokens) the
selection and window branches run instead as one dense attention masked to the
same keys (cheaper there than the kernels' sorting and gathering). Incremental decode runs the fast form against the KV cache
(which holds the branches' own keys and values, when given, beside k and v).
"""
from __future__ import annotations

import math

import torch

from ..kernels.gated_sum import gated_sum
from ..kernels.nsa_branches import (block_importance, compress, compress_by_segments, compressed_visible,
                                     compressed_weights, top_blocks)
from ..kernels.nsa_compression import compression_and_selection
from ..kernels.nsa_dense import dense_selection_and_window
from ..kernels.nonfinite import all_finite
from ..kernels.positions import query_positions, repeat_kv
from ..kernels.selected_blocks import add_gated_selected_blocks
from ..kernels.sliding_window import add_gated_sliding_window
from ..masks.selection import block_selection
from ..reference import materialised_attention
from ..params import Param, TensorInput
from ..registry import MechanismSpec, register
from ..validation import check_int, check_tensor
from ..builders.kv_cache_step import read_every_key
from ..state import KVCache

# up to this many (query, key) pairs per head (and finite keys) the selection and window branches run as dense
# masked attention (the same keys, fewer and larger ops); above it on the selected-block and sliding-window kernels
DENSE_PAIRS = 1 << 18
PAPER = "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention"
INPUTS = ("k_pos", "k_w1", "k_w2", "v_pos", "v_w1", "v_w2")
# the compression and window branches' own keys and values (each optional; the call's k or v otherwise)
BRANCH_KV = (("k_cmp", "v_cmp"), ("k_win", "v_win"))


def nsa_inputs(q, k, v, generator=None, *, compress_block: int = 32, hidden: int | None = None,
               branch_kv: bool = True) -> dict:
    """Example tensor inputs (gates, compression MLPs and, with ``branch_kv``, the compression and window
    branches' own keys and values) for given q, k, v; float64 when q is."""
    B, H, N, D = q.shape
    Dv = v.shape[3]
    out = {"gates": torch.rand(B, H, N, 3, generator=generator, dtype=q.dtype).to(q.device)}
    if branch_kv:
        for k_name, v_name in BRANCH_KV:
            out[k_name] = torch.randn(k.shape, generator=generator, dtype=q.dtype).to(q.device)
            out[v_name] = torch.randn(v.shape, generator=generator, dtype=q.dtype).to(q.device)
    for name, E in (("k", D), ("v", Dv)):
        width = hidden or E
        out[f"{name}_pos"] = (0.1 * torch.randn(compress_block, E, generator=generator, dtype=q.dtype)).to(q.device)
        w1 = torch.randn(compress_block * E, width, generator=generator, dtype=q.dtype) / math.sqrt(compress_block * E)
        out[f"{name}_w1"] = w1.to(q.device)
        out[f"{name}_w2"] = (torch.randn(width, E, generator=generator, dtype=q.dtype) / math.sqrt(width)).to(q.device)
    return out


def _check(q, k, v, gates, tensors, compress_stride, select_block, select_count, window):
    for name, value, minimum in (("compress_stride", compress_stride, 1), ("select_block", select_block, 1),
                                 ("select_count", select_count, 3), ("window", window, 1)):
        check_int(name, value, minimum=minimum)
    B, H, Nq, D = q.shape
    check_tensor("gates", gates, (B, H, Nq, 3), q)
    pos = tensors["k_pos"]
    if not isinstance(pos, torch.Tensor) or pos.ndim != 2:
        raise ValueError("k_pos must be a tensor (compress_block, head_dim): the intra-block position encoding")
    block = pos.shape[0]
    for name, E in (("k", D), ("v", v.shape[3])):
        w1 = tensors[f"{name}_w1"]
        hidden = w1.shape[1] if isinstance(w1, torch.Tensor) and w1.ndim == 2 else -1
        check_tensor(f"{name}_pos", tensors[f"{name}_pos"], (block, E), q)
        check_tensor(f"{name}_w1", w1, (block * E, hidden), q)
        check_tensor(f"{name}_w2", tensors[f"{name}_w2"], (hidden, E), q)
    for pair in BRANCH_KV:
        for name, like in zip(pair, (k, v)):
            check_tensor(name, tensors.get(name), like.shape, q, optional=True)
    if block % compress_stride or select_block % compress_stride:
        raise ValueError(f"compress_stride={compress_stride} must divide the compression block (k_pos has "
                         f"{block} rows) and select_block={select_block}")
    return block


def _branch_kv(k, v, tensors, pair):
    """A branch's own keys and values where given, else the call's."""
    kb, vb = (tensors.get(n) for n in pair)
    return k if kb is None else kb, v if vb is None else vb


def _compressed_kv(k, v, tensors, block, stride, phi=compress):
    k, v = _branch_kv(k, v, tensors, BRANCH_KV[0])
    kc = phi(k, tensors["k_pos"], tensors["k_w1"], tensors["k_w2"], block=block, stride=stride)
    vc = phi(v, tensors["v_pos"], tensors["v_w1"], tensors["v_w2"], block=block, stride=stride)
    return kc, vc


def _mix(gates, *branches):
    return sum(gates[..., c : c + 1] * o for c, o in enumerate(branches))


def _reference(q, k, v, *, causal, mask, scale, compress_stride, select_block, select_count, window, gates, **tensors):
    block = _check(q, k, v, gates, tensors, compress_stride, select_block, select_count, window)
    B, H, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    kc, vc = _compressed_kv(k, v, tensors, block, compress_stride)
    visible = compressed_visible(query_positions(Nq, Nk, q.device), kc.shape[2], block, compress_stride)
    p_cmp = compressed_weights(q, kc, visible, scale)
    o_cmp = p_cmp @ repeat_kv(vc, H)
    n_blocks = -(-Nk // select_block)
    importance = block_importance(p_cmp, Hkv, n_blocks, block=block, stride=compress_stride, select_block=select_block)
    blocks, valid = top_blocks(importance, Nq, Nk, select_block=select_block, count=select_count)
    chosen = torch.zeros(B, Hkv, Nq, n_blocks + 1, dtype=torch.bool, device=q.device)
    chosen.scatter_(3, torch.where(valid, blocks, n_blocks), True)
    kpos = torch.arange(Nk, device=q.device)
    qpos = query_positions(Nq, Nk, q.device)[:, None]
    past = kpos <= qpos
    slc = repeat_kv(chosen[..., kpos // select_block], H) & past
    o_slc = materialised_attention(q, k, v, causal=False, mask=slc, scale=scale)
    k_win, v_win = _branch_kv(k, v, tensors, BRANCH_KV[1])
    o_win = materialised_attention(q, k_win, v_win, causal=False, mask=past & (kpos > qpos - window), scale=scale)
    return _mix(gates, o_cmp, o_slc, o_win)


def _selection(q, k, v, gates, tensors, scale, compress_stride, select_block, select_count, window):
    """The compression branch's output and the chosen blocks ``(blocks, valid)`` (one row per token and kv
    group), from one pass."""
    block = _check(q, k, v, gates, tensors, compress_stride, select_block, select_count, window)
    Nq, Nk = q.shape[2], k.shape[2]
    kc, vc = _compressed_kv(k, v, tensors, block, compress_stride, phi=compress_by_segments)
    o_cmp, blocks, valid = compression_and_selection(
        q, kc, vc, query_positions(Nq, Nk, q.device), scale=scale, block=block, stride=compress_stride,
        select_block=select_block, select_count=select_count, kv_len=Nk)
    return o_cmp, blocks, valid


def nsa_selection(q, k, v, *, gates, scale=None, compress_stride=16, select_block=64, select_count=16, window=512,
                  **tensors):
    """The blocks NSA's selection branch attends to, as a :class:`~attnkit.masks.selection.BlockSelection`
    with one row per token and kv group (for measuring density and recall)."""
    with torch.no_grad():
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        _, blocks, valid = _selection(q, k, v, gates, tensors, scale, compress_stride, select_block, select_count,
                                      window)
        return block_selection(blocks, valid, block_q=1, block_k=select_block, q_len=q.shape[2], kv_len=k.shape[2])


def _sparse(q, k, v, *, causal, mask, scale, compress_stride, select_block, select_count, window, gates, **tensors):
    o_cmp, blocks, valid = _selection(q, k, v, gates, tensors, scale, compress_stride, select_block, select_count,
                                      window)
    Nq, Nk = q.shape[2], k.shape[2]
    k_win, v_win = _branch_kv(k, v, tensors, BRANCH_KV[1])
    if Nq * Nk <= DENSE_PAIRS and all_finite(k) and (k_win is k or all_finite(k_win)):
        o_slc, o_win = dense_selection_and_window(q, k, v, blocks, valid, select_block=select_block, window=window,
                                                  scale=scale, k_win=k_win, v_win=v_win)
        return gated_sum(gates, o_cmp, o_slc, o_win)
    sel = block_selection(blocks, valid, block_q=1, block_k=select_block, q_len=Nq, kv_len=Nk)
    out = gated_sum(gates[..., :1], o_cmp)
    out = add_gated_selected_blocks(out, gates[..., 1], q, k, v, sel, scale=scale, causal=True)
    return add_gated_sliding_window(out, gates[..., 2], q, k_win, v_win, window=window, scale=scale)


def _step(q, k, v, state, *, causal, mask, scale, **params):
    """Incremental form: the fast form against the KV cache. The branches' own keys and values, when given,
    are cached beside the call's along the head axis (keys: k, then k_cmp, k_win as given; values alike)."""
    k_names = [pair[0] for pair in BRANCH_KV if params.get(pair[0]) is not None]
    v_names = [pair[1] for pair in BRANCH_KV if params.get(pair[1]) is not None]
    new_k = torch.cat([k, *(params[n] for n in k_names)], 1)
    new_v = torch.cat([v, *(params[n] for n in v_names)], 1)
    state = KVCache(new_k, new_v) if state is None else state.append(new_k, new_v)
    held_k, held_v = state.k.split(k.shape[1], 1), state.v.split(v.shape[1], 1)
    params.update(zip(k_names, held_k[1:]))
    params.update(zip(v_names, held_v[1:]))
    return _sparse(q, held_k[0], held_v[0], causal=causal, mask=mask, scale=scale, **params), state


def _read(k, v, state, mask, **params):
    """What a step reads for ``attnkit.capture``: the selection branch's keys and values so far."""
    if state is None:
        return read_every_key(k, v, None, mask)
    Hkv = k.shape[1]
    return read_every_key(k, v, KVCache(state.k[:, :Hkv], state.v[:, :Hkv]), mask)


_step.read = _read


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params):
    """The KV cache: the call's keys and values and each branch's own keys and values given."""
    keys = 1 + sum(params.get(k_name) is not None for k_name, _ in BRANCH_KV)
    values = 1 + sum(params.get(v_name) is not None for _, v_name in BRANCH_KV)
    v_dim = head_dim if v_dim is None else v_dim
    return batch * kv_heads * seq_len * (keys * head_dim + values * v_dim)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, compress_stride=16, select_block=64, select_count=16,
           window=512, compress_block=32, **_):
    """Forward FLOPs of the three branches' attention (4 * pairs * head_dim each; the MLP not counted)."""
    pos = torch.arange(kv_len - q_len, kv_len)
    cmp_pairs = ((pos - compress_block) // compress_stride + 1).clamp(min=0).sum()
    slc_pairs = (pos + 1).clamp(max=select_count * select_block).sum()
    win_pairs = (pos + 1).clamp(max=window).sum()
    return 4 * batch * heads * head_dim * int(cmp_pairs + slc_pairs + win_pairs)


register(MechanismSpec(
    name="nsa",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=_reference,
    fast={"sparse": _sparse},
    step=_step,
    state_size=_state_size,
    params={"compress_stride": Param(16, int, "tokens between compressed blocks (d)", low=1),
            "select_block": Param(64, int, "keys per selection block (l')", low=1),
            "select_count": Param(16, int, "selected blocks per token, initial and two local included (n)", low=3),
            "window": Param(512, int, "keys of the sliding-window branch, the query's own included (w)", low=1)},
    test_params={"compress_stride": 8, "select_block": 16, "select_count": 4, "window": 8},
    inputs={
        "gates": TensorInput("(B, H, N, 3)", "per-token gates in [0, 1] of the compression, selection and window branches"),
        "k_pos": TensorInput("(l, D)", "intra-block position encoding added to each block of l keys (l: compression block)"),
        "k_w1": TensorInput("(l * D, hidden)", "first layer of the key compression MLP"),
        "k_w2": TensorInput("(hidden, D)", "second layer of the key compression MLP"),
        "v_pos": TensorInput("(l, Dv)", "intra-block position encoding added to each block of l values"),
        "v_w1": TensorInput("(l * Dv, hidden)", "first layer of the value compression MLP"),
        "v_w2": TensorInput("(hidden, Dv)", "second layer of the value compression MLP"),
        "k_cmp": TensorInput("(B, Hkv, N, D)", "the compression branch's own keys (default: k)", required=False),
        "v_cmp": TensorInput("(B, Hkv, N, Dv)", "the compression branch's own values (default: v)", required=False),
        "k_win": TensorInput("(B, Hkv, N, D)", "the window branch's own keys (default: k)", required=False),
        "v_win": TensorInput("(B, Hkv, N, Dv)", "the window branch's own values (default: v)", required=False),
    },
    tensor_inputs=lambda q, k, v, g: nsa_inputs(q, k, v, g, compress_block=16),
    tensor_inputs_per_token=("gates", "k_cmp", "v_cmp", "k_win", "v_win"),
    key_inputs=("k_cmp", "k_win"),
    supports_mask=False,
    flops=_flops,
    complexity="O(N (N / compress_stride + select_count select_block + window))",
    weights_note="the compression branch attends to blocks an MLP compressed, not to tokens, so the output is not a weighted sum of the values",
    summary="compressed blocks + top-n selected blocks (GQA-shared) + sliding window, mixed by gates",
))
