"""Native Hybrid Attention (NHA): Du, Hu, Zhang, Sun, Cheng, "Native Hybrid Attention for Efficient Sequence Modeling" (2025).

Long-term context lives in ``M`` key/value slots per kv head, written by a
gated linear RNN (as in Gated Slot Attention); short-term context is the
``window`` most recent tokens (the current one included). One softmax runs
over the union, so the mix of long- and short-term memory is decided per
token and per head, with no fusion parameters. With ``f_t`` the per-slot gate
logits (the tensor input ``slot_gate``, ``(B, kv_heads, N, M)``), the log forget
gate ``g_t = logsigmoid(f_t) / gate_normalizer``, ``alpha_t = exp(g_t)`` and
``phi`` a feature map:

    K~_t = alpha_t * K~_{t-1} + (1 - alpha_t) phi(k_t)^T          (M x D)
    V~_t = alpha_t * V~_{t-1} + (1 - alpha_t) v_t^T               (M x Dv)
    p_t  = softmax([scale * K~_t phi(q_t) ; scale * q_t . k_j  for j in (t - window, t]])
    o_t  = p_t[:M] V~_t + sum_j p_t[M + j] v_j

``window = 0`` is the pure linear-RNN (slot) model; a window as long as the
sequence adds full attention to the slots: one knob moves a layer between
linear and full attention, which is the paper's inter-layer hybrid.
In attnkit a positional encoding passed to the API rotates q and k for both
branches (the paper rotates them for the window branch only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...params import Param, TensorInput
from .chunked import NHAState, initial_state, nha_chunks
from ...kernels.positions import repeat_kv
from ...registry import MechanismSpec, register
from ...validation import check_float, check_int

PAPER = "Native Hybrid Attention for Efficient Sequence Modeling"
FEATURES = {"swish": F.silu, "identity": lambda x: x}


def _log_forget(slot_gate, gate_normalizer):
    """``g = logsigmoid(f) / gate_normalizer`` (<= 0): the normaliser keeps forget gates near 1."""
    return F.logsigmoid(slot_gate) / gate_normalizer


def _check(q, k, slot_gate, window, feature_map, chunk, gate_normalizer) -> None:
    if not isinstance(slot_gate, torch.Tensor):
        raise TypeError(f"slot_gate must be a torch.Tensor (B, kv_heads, N, slots), got {type(slot_gate).__name__}")
    B, Hkv, N = k.shape[:3]
    if slot_gate.ndim != 4 or tuple(slot_gate.shape[:3]) != (B, Hkv, N) or slot_gate.shape[3] < 1:
        raise ValueError(f"slot_gate must have shape (B, kv_heads, N, slots) = ({B}, {Hkv}, {N}, slots>=1), "
                         f"got {tuple(slot_gate.shape)}")
    if slot_gate.dtype != q.dtype:
        raise TypeError(f"slot_gate has dtype {slot_gate.dtype} but q has {q.dtype}; expected the same dtype")
    check_float("gate_normalizer", gate_normalizer, positive=True)
    check_int("window", window, minimum=0)
    check_int("chunk", chunk)
    if feature_map not in FEATURES:
        raise ValueError(f"feature_map must be one of {sorted(FEATURES)}, got {feature_map!r}")


def nha_reference(q, k, v, *, causal, mask, scale, slot_gate, window, feature_map, chunk, gate_normalizer):
    """Token by token, straight from the equations (run it in float64)."""
    _check(q, k, slot_gate, window, feature_map, chunk, gate_normalizer)
    log_forget = _log_forget(slot_gate, gate_normalizer)
    H, N = q.shape[1], q.shape[2]
    phi = FEATURES[feature_map]
    qf, kf = phi(q), phi(k)
    B, Hkv, _, D = k.shape
    M = slot_gate.shape[-1]
    k_slots = q.new_zeros(B, Hkv, M, D)
    v_slots = q.new_zeros(B, Hkv, M, v.shape[-1])
    outs = []
    for t in range(N):
        alpha = log_forget[:, :, t].exp()[..., None]  # (B, Hkv, M, 1)
        k_slots = alpha * k_slots + (1 - alpha) * kf[:, :, t, None, :]
        v_slots = alpha * v_slots + (1 - alpha) * v[:, :, t, None, :]
        lo = max(0, t - window + 1)
        k_win, v_win = repeat_kv(k[:, :, lo : t + 1], H), repeat_kv(v[:, :, lo : t + 1], H)
        a = scale * (qf[:, :, t, None, :] * repeat_kv(k_slots, H)).sum(-1)
        b = scale * (q[:, :, t, None, :] * k_win).sum(-1)
        p = torch.softmax(torch.cat([a, b], dim=-1), dim=-1)[..., None]
        outs.append((p[:, :, :M] * repeat_kv(v_slots, H)).sum(2) + (p[:, :, M:] * v_win).sum(2))
    return torch.stack(outs, dim=2)


def nha_weights(q, k, v, *, causal, mask, scale, slot_gate, window, feature_map, chunk, gate_normalizer):
    """The slots unfolded into tokens: slot ``m`` holds ``V~_t[m] = sum_{s<=t} c_tsm v_s`` with
    ``c_tsm = (1 - alpha_s[m]) alpha_{s+1}[m] ... alpha_t[m]`` (and ``K~`` the same sum of ``phi(k_s)``), so
    ``W_ts = sum_m p_t[m] c_tsm + p_t[window key s]`` and ``o = W v``. Rows sum to one."""
    _check(q, k, slot_gate, window, feature_map, chunk, gate_normalizer)
    H, N = q.shape[1], q.shape[2]
    phi = FEATURES[feature_map]
    log_forget = _log_forget(slot_gate, gate_normalizer)  # (B, Hkv, N, M)
    M = log_forget.shape[-1]
    total = log_forget.cumsum(2)
    earlier = torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    decay = (total[:, :, :, None] - total[:, :, None]).masked_fill(~earlier[..., None], float("-inf")).exp()
    written = decay * -torch.expm1(log_forget)[:, :, None]  # c_tsm, (B, Hkv, N, N, M)
    k_slots = torch.einsum("bgtsm,bgsd->bgtmd", written, phi(k))
    slot_scores = scale * torch.einsum("bhtd,bhtmd->bhtm", phi(q), repeat_kv(k_slots, H))
    in_window = earlier & ~torch.ones(N, N, dtype=torch.bool, device=q.device).tril(-window)
    token_scores = (scale * q @ repeat_kv(k, H).transpose(-1, -2)).masked_fill(~in_window, float("-inf"))
    p = torch.softmax(torch.cat([slot_scores, token_scores], dim=-1), dim=-1)
    return torch.einsum("bhtm,bhtsm->bhts", p[..., :M], repeat_kv(written, H)) + p[..., M:]


def nha_chunked(q, k, v, *, causal, mask, scale, slot_gate, window, feature_map, chunk, gate_normalizer):
    _check(q, k, slot_gate, window, feature_map, chunk, gate_normalizer)
    state = initial_state(k, v, slot_gate.shape[-1])
    out, _ = nha_chunks(q, k, v, _log_forget(slot_gate, gate_normalizer), state, scale=scale, window=window, chunk=chunk,
                        feature=FEATURES[feature_map])
    return out


def nha_step(q, k, v, state, *, causal, mask, scale, slot_gate, window, feature_map, chunk, gate_normalizer):
    _check(q, k, slot_gate, window, feature_map, chunk, gate_normalizer)
    if state is None:
        state = initial_state(k, v, slot_gate.shape[-1])
    elif not isinstance(state, NHAState) or state.k_slots.shape[:2] != k.shape[:2] or state.k_slots.shape[2] != slot_gate.shape[-1]:
        raise ValueError("state is not the NHA state of this batch/layer (shape of its slot memories differs)")
    return nha_chunks(q, k, v, _log_forget(slot_gate, gate_normalizer), state, scale=scale, window=window,
                      chunk=chunk, feature=FEATURES[feature_map])


nha_step.one_query_per_key = True  # a recurrence reads token t's query with token t's key


def _example_inputs(q, k, v, g):
    B, Hkv, N = k.shape[:3]
    return {"slot_gate": (torch.randn(B, Hkv, N, 6, generator=g, dtype=torch.float64) * 2 + 1).to(q.dtype)}


def _flops(B, H, Nq, Nk, D, causal, window=64, slots=None):
    slots = D if slots is None else slots
    return 4 * B * H * Nq * (slots + min(window, Nk)) * D


def _state_size(B, H, Hkv, N, D, v_dim=None, window=64, slots=None, slot_gate=None, **params):
    """Slot memories and the last ``window - 1`` tokens; ``slots`` = ``slot_gate``'s last size when given, else D."""
    slots = (D if slot_gate is None else slot_gate.shape[-1]) if slots is None else slots
    return B * Hkv * (slots + min(max(window - 1, 0), N)) * (D + (v_dim or D))


register(MechanismSpec(
    name="nha",
    family="hybrid",
    papers=(PAPER,),
    patterns=frozenset({"causal-self"}),
    reference=nha_reference,
    fast={"chunked": nha_chunked},
    step=nha_step,
    params={"window": Param(64, int, 'sliding-window keys of the softmax part (0: slots only)', low=0),
            "feature_map": Param('swish', str, 'feature map of the slot memory', choices=("swish", "identity")),
            "gate_normalizer": Param(8.0, float, 'divides the slot-gate logits', low=0, low_open=True),
            "chunk": Param(16, int, 'tokens per chunk of the chunked form', low=1)},
    tensor_inputs=_example_inputs,
    inputs={"slot_gate": TensorInput("(B, Hkv, N, slots)", "slot-gate logits: which slot memories each token writes")},
    tensor_inputs_per_token=("slot_gate",),
    supports_mask=False,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N (M + w))",
    weights=nha_weights,
    summary="gated-RNN key/value slots + sliding-window tokens under one softmax",
    test_params={"window": 5, "chunk": 8, "gate_normalizer": 2.0},
))
