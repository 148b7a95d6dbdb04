"""SnapKV: the end of the prompt votes for the prompt keys generation will need.

Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (2024).
The prompt (its first ``prompt`` tokens) is prefilled with full causal
attention. Then, per head, the last ``window`` prompt queries (the observation
window) vote: each prefix key (the prompt before the window) gets the sum of
the attention weights those queries gave it; the votes are smoothed by 1-D
average pooling (``kernel`` wide, zero padded, stride 1, as the authors' code)
so that neighbours of a chosen key come with it; the ``capacity - window``
best-voted prefix keys and the window's own keys are kept and the rest of the
prompt's cache is dropped before generation. Decoded tokens append to the
compressed cache; nothing else is evicted. A prompt of at most ``capacity``
tokens is not compressed.

Causal self-attention only, no mask. ``reference`` materialises the scores and
the resulting mask; the ``compressed`` form (and the incremental state) holds
the real compressed cache. Votes are kept in float64; grouped key/value heads
are repeated to the query heads, each of which keeps its own keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import Param
from ..kernels.dense import sdpa_attention
from ..kernels.positions import causal_mask, repeat_kv
from ..reference import materialised_attention, materialised_weights
from ..registry import MechanismSpec, register
from ..validation import check_int


def _check(prompt, capacity, window, kernel):
    for name, value, least in (("prompt", prompt, 0), ("capacity", capacity, 2), ("window", window, 1),
                               ("kernel", kernel, 1)):
        check_int(name, value, minimum=least)
    if window >= capacity:
        raise ValueError(f"window must be < capacity (the window's keys are part of it), got {window} >= {capacity}")
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd (the pooled votes keep their length), got {kernel}")


def _votes(q_rows, k_seen, first_row: int, prefix: int, scale):
    """Attention weights of query rows ``first_row..`` over their causal keys, summed over rows, on the prefix."""
    with torch.no_grad():
        s = (q_rows @ k_seen.transpose(-1, -2)).to(torch.float64) * scale
        rows = torch.arange(first_row, first_row + q_rows.shape[2], device=q_rows.device)[:, None]
        s = s.masked_fill(torch.arange(k_seen.shape[2], device=s.device)[None, :] > rows, float("-inf"))
        return torch.softmax(s, dim=-1)[..., :prefix].sum(dim=2)


def _selected(votes, capacity, window, kernel):
    """Indices (ascending) of the prefix keys kept: top ``capacity - window`` of the pooled votes."""
    B, H, n = votes.shape
    pooled = F.avg_pool1d(votes.reshape(B * H, 1, n), kernel, stride=1, padding=kernel // 2).view(B, H, n)
    return pooled.topk(capacity - window, dim=-1).indices.sort(dim=-1).values


def snapkv_reference(q, k, v, *, causal, mask, scale, **params):
    return materialised_attention(q, k, v, causal=False, mask=snapkv_kept(q, k, scale=scale, **params), scale=scale)


def snapkv_weights(q, k, v, *, causal, mask, scale, **params):
    """Softmax weights over the keys the cache holds when each query reads it (zeros: dropped)."""
    return materialised_weights(q, k, causal=False, mask=snapkv_kept(q, k, scale=scale, **params), scale=scale)


def snapkv_kept(q, k, *, scale, prompt, capacity, window, kernel):
    """The ``(B, H, N, N)`` mask of the keys each query reads: causal, the prefix cut after the prompt."""
    _check(prompt, capacity, window, kernel)
    B, H, N, _ = q.shape
    seen = causal_mask(N, N, q.device).expand(B, H, N, N).clone()
    if prompt > capacity and N > prompt:
        prefix = prompt - window
        votes = _votes(q[:, :, prefix:prompt], repeat_kv(k, H)[:, :, :prompt], prefix, prefix, scale)
        keep = torch.zeros(B, H, prefix, dtype=torch.bool, device=q.device)
        keep.scatter_(-1, _selected(votes, capacity, window, kernel), True)
        seen[:, :, prompt:, :prefix] &= keep[:, :, None, :]
    return seen


class SnapKVState:
    """The cache (keys repeated to the query heads), tokens consumed, and until compression the votes so far."""

    def __init__(self, k, v, length: int, votes=None):
        self.k, self.v, self.length, self.votes = k, v, length, votes

    def numel(self) -> int:
        return self.k.numel() + self.v.numel()


def snapkv_step(q, k, v, state, *, causal, mask, scale, prompt, capacity, window, kernel):
    _check(prompt, capacity, window, kernel)
    H = q.shape[1]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    if state is not None and (not isinstance(state, SnapKVState) or state.k.shape[:2] != k.shape[:2]):
        raise ValueError("state must be the SnapKVState this mechanism returned for the same batch and heads")
    start = 0 if state is None else state.length
    ck = k[:, :, :0] if state is None else state.k
    cv = v[:, :, :0] if state is None else state.v
    votes = None if state is None else state.votes
    prefix, outs = prompt - window, []
    compress = prompt > capacity
    n_pre = max(0, min(q.shape[2], prompt - start))  # new tokens that are still prompt
    if n_pre:
        ck, cv = torch.cat([ck, k[:, :, :n_pre]], dim=2), torch.cat([cv, v[:, :, :n_pre]], dim=2)
        outs.append(sdpa_attention(q[:, :, :n_pre], ck, cv, causal=True, mask=None, scale=scale))
        lo = max(start, prefix)
        if compress and lo < start + n_pre:
            rows = q[:, :, lo - start : n_pre]
            new = _votes(rows, ck, lo, prefix, scale)
            votes = new if votes is None else votes + new
        if compress and start + n_pre == prompt:
            index = _selected(votes, capacity, window, kernel)
            gather = lambda t: t[:, :, :prefix].gather(2, index[..., None].expand(-1, -1, -1, t.shape[-1]))  # noqa: E731
            ck, cv, votes = torch.cat([gather(ck), ck[:, :, prefix:]], 2), torch.cat([gather(cv), cv[:, :, prefix:]], 2), None
    if n_pre < q.shape[2]:
        ck, cv = torch.cat([ck, k[:, :, n_pre:]], dim=2), torch.cat([cv, v[:, :, n_pre:]], dim=2)
        outs.append(sdpa_attention(q[:, :, n_pre:], ck, cv, causal=True, mask=None, scale=scale))
    out = torch.cat(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])
    return out, SnapKVState(ck, cv, start + q.shape[2], votes)


def snapkv_compressed(q, k, v, *, causal, mask, scale, **params):
    return snapkv_step(q, k, v, None, causal=causal, mask=mask, scale=scale, **params)[0]


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, prompt=4096, capacity=2048, **params):
    kept = seq_len if seq_len < prompt or prompt <= capacity else capacity + seq_len - prompt  # cut at the prompt's end
    return batch * heads * kept * (head_dim + (v_dim or head_dim))


register(MechanismSpec(
    name="snapkv", family="kv_cache",
    papers=("SnapKV: LLM Knows What You are Looking for Before Generation",),
    patterns=frozenset({"causal-self"}), reference=snapkv_reference, fast={"compressed": snapkv_compressed},
    step=snapkv_step, params={
        "prompt": Param(4096, int, 'prompt tokens after which the cache is compressed once', low=0),
        "capacity": Param(2048, int, 'tokens kept from the prompt (window included)', low=2),
        "window": Param(32, int, "observation window: the prompt's last queries that vote (< capacity)", low=1),
        "kernel": Param(5, int, 'odd pooling width of the votes', low=1)},
    supports_mask=False,
    state_size=_state_size, complexity="O(N capacity) decoding after an O(prompt^2) prefill",
    summary="prompt KV cut to `capacity`: the last `window` prompt queries vote (pooled) for prefix keys",
    test_params={"prompt": 24, "capacity": 12, "window": 4, "kernel": 3},
    weights=snapkv_weights, extra={"kept": snapkv_kept},
))
