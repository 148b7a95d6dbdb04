"""Chunked form of Native Hybrid Attention (see :mod:`attnkit.families.nha` for the equations).

Within a chunk of ``C`` queries everything is materialised: the decayed slot
writes ``exp(L_t - L_j) s_j`` as a ``(C, C, M)`` tensor (``L`` the cumulative
log forget gate inside the chunk), the window scores against the previous
``w - 1`` keys plus the chunk's own keys. Between chunks only the slot memories
``K~, V~`` and the last ``w - 1`` keys/values are carried, which is also the
incremental state: a step is this same loop started from that state.
"""
from __future__ import annotations

import torch

from ...kernels.nonfinite import hold_back_nonfinite, poison
from ...kernels.positions import repeat_kv


class NHAState:
    """Slot memories ``(B, Hkv, M, D)``, ``(B, Hkv, M, Dv)``, the last ``window - 1`` keys/values, tokens seen."""

    def __init__(self, k_slots, v_slots, k_recent, v_recent, length: int):
        self.k_slots, self.v_slots = k_slots, v_slots
        self.k_recent, self.v_recent = k_recent, v_recent
        self.length = length

    def numel(self) -> int:
        return sum(t.numel() for t in (self.k_slots, self.v_slots, self.k_recent, self.v_recent))


def initial_state(k, v, slots: int) -> NHAState:
    B, Hkv, _, D = k.shape
    zk = k.new_zeros(B, Hkv, slots, D)
    zv = v.new_zeros(B, Hkv, slots, v.shape[-1])
    return NHAState(zk, zv, k[:, :, :0], v[:, :, :0], 0)


def nha_chunks(q, k, v, log_forget, state: NHAState, *, scale, window, chunk, feature):
    """Outputs for the new tokens and the state after them; ``log_forget`` is ``g``, ``(B, Hkv, N, M)``."""
    H = q.shape[1]
    (k, v, log_forget), poisoned = hold_back_nonfinite(k, v, log_forget)  # a NaN stays in its token's future
    qf, kf = feature(q), feature(k)
    k_slots, v_slots = state.k_slots, state.v_slots
    k_recent, v_recent = state.k_recent, state.v_recent
    outs = []
    for c0 in range(0, q.shape[2], chunk):
        sl = slice(c0, c0 + chunk)
        out, k_slots, v_slots = _chunk(
            q[:, :, sl], qf[:, :, sl], k[:, :, sl], kf[:, :, sl], v[:, :, sl], log_forget[:, :, sl],
            k_slots, v_slots, k_recent, v_recent, scale=scale, window=window, heads=H,
        )
        outs.append(out)
        k_recent, v_recent = _last(k_recent, k[:, :, sl], window - 1), _last(v_recent, v[:, :, sl], window - 1)
    out, (k_slots, v_slots) = poison(torch.cat(outs, dim=2), (k_slots, v_slots), poisoned)
    return out, NHAState(k_slots, v_slots, k_recent, v_recent, state.length + q.shape[2])


def _last(old, new, keep: int):
    """The last ``keep`` tokens of ``old`` and ``new`` concatenated along the sequence."""
    both = torch.cat([old, new], dim=2)
    return both[:, :, max(both.shape[2] - max(keep, 0), 0):]


def _chunk(q, qf, k, kf, v, g, k_slots, v_slots, k_recent, v_recent, *, scale, window, heads):
    C, P = q.shape[2], k_recent.shape[2]
    L = g.cumsum(dim=2)  # (B, Hkv, C, M): log of the decay from the chunk start to t
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (L[:, :, :, None, :] - L[:, :, None, :, :]).masked_fill(~causal[None, None, :, :, None], float("-inf"))
    write = diff.exp() * (1 - g.exp())[:, :, None, :, :]  # (B, Hkv, C_t, C_j, M): weight of token j in slot m at t
    decay = L.exp()  # (B, Hkv, C, M): what is left of the memory at the chunk start
    write, decay = repeat_kv(write.flatten(3), heads).unflatten(3, (C, -1)), repeat_kv(decay, heads)
    ks, vs = repeat_kv(k_slots, heads), repeat_kv(v_slots, heads)

    # slot scores a[t, m] = scale * phi(q_t) . K~_t[m]
    a = decay * (qf @ ks.transpose(-1, -2))
    a = a + (write * (qf @ repeat_kv(kf, heads).transpose(-1, -2))[..., None]).sum(3)
    # window scores b[t, j] over the previous P keys and the chunk's keys
    kw, vw = torch.cat([k_recent, k], dim=2), torch.cat([v_recent, v], dim=2)
    t_pos = torch.arange(C, device=q.device)[:, None] + P
    j_pos = torch.arange(P + C, device=q.device)[None, :]
    in_window = (j_pos <= t_pos) & (j_pos > t_pos - window)
    b = (q @ repeat_kv(kw, heads).transpose(-1, -2)).masked_fill(~in_window, float("-inf"))
    p = torch.softmax(torch.cat([a * scale, b * scale], dim=-1), dim=-1)
    p_slot, p_win = p[..., : a.shape[-1]], p[..., a.shape[-1]:]

    # output: slots read at time t, plus the window tokens
    out = (p_slot * decay) @ vs
    out = out + (p_slot[:, :, :, None, :] * write).sum(-1) @ repeat_kv(v, heads)
    out = out + p_win @ repeat_kv(vw, heads)

    # memories after the chunk (kv heads)
    last_w = (L[:, :, -1:, :] - L).exp() * (1 - g.exp())  # (B, Hkv, C, M)
    last_d = L[:, :, -1, :].exp()[..., None]  # (B, Hkv, M, 1)
    k_slots = last_d * k_slots + last_w.transpose(-1, -2) @ kf
    v_slots = last_d * v_slots + last_w.transpose(-1, -2) @ v
    return out, k_slots, v_slots
