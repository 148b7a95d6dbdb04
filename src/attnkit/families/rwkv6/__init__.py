"""RWKV-6 (Finch) time mixing: a matrix-valued state with data-dependent per-channel decay.

Peng et al., "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence"
(2024), eq. 16-19. Per head, with the receptance ``r`` (the query here), keys ``k``,
values ``v``, a per-token, per-channel decay ``w_t = exp(-exp(d_t))`` in ``(0, 1)^D`` and
a per-channel bonus ``u`` for the current token::

    wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(w_{i+1} ... w_{t-1}) k_i^T v_i
    o_t   = r_t wkv_t

and in RNN mode, with the state ``S_t = diag(w_t) S_{t-1} + k_t^T v_t`` (``(Dk, Dv)``),
``o_t = r_t (S_{t-1} + diag(u) k_t^T v_t)``: the state read by token ``t`` holds the tokens
before it, and ``t`` itself enters through the bonus only. A decode step costs O(Dk Dv).

attnkit takes the decay in log space, ``log_w = -exp(d) <= 0``, ``(B, H, N, Dk)`` per token,
and ``u`` ``(H, Dk)``; ``attnkit.nn.inputs.rwkv6.RWKV6Decay`` learns them (the decay's
low-rank, data-dependent part as in the paper). The data-dependent token shift (``lerp``
of ``x_t`` and ``x_{t-1}`` through a LoRA) and the output gate and group norm belong to
the RWKV block, ``attnkit.nn.RWKV6TimeMix``, not to this op. ``scale`` is not used (RWKV does not scale ``r``). Causal only.

Forms: ``parallel`` (every pair's per-channel weight materialised: the reference),
``chunked`` (GLA's two-level chunked form, run on keys, values and gates shifted one token
later so that token ``t`` reads ``S_{t-1}``, plus the bonus), ``recurrent`` (the RNN mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import registry
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism
from ...kernels.positions import repeat_kv
from ...params import Param, TensorInput
from ...state import RecurrentState, expect_state
from ...validation import check_int, check_tensor

PAPER = "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence"


def rwkv6_parallel(r, k, v, log_w, u, S0):
    """Reference: ``o_t = sum_{i<t} sum_d r_td k_id e^{b_{t-1,d} - b_id} v_i + (r_t . u . k_t) v_t + r_t e^{b_{t-1}} S0``.

    ``b_t = log_w_0 + ... + log_w_t`` (``b_{-1} = 0``). Returns ``(out, S_N)``. Later tokens are
    selected away, not multiplied by zero, so a NaN stays in its token's future."""
    N = r.shape[2]
    seen = torch.ones(N, N, dtype=torch.bool, device=r.device).tril()[..., None]  # i <= t
    b = log_w.cumsum(dim=2)
    terms = torch.where(seen, pair_weights(r, k, log_w, u)[..., None] * v[:, :, None], 0)
    out = terms.sum(dim=3) + (r * (b - log_w).exp()) @ S0
    b_end = b[:, :, -1:]
    S = b_end.transpose(-1, -2).exp() * S0 + (k * (b_end - b).exp()).transpose(-1, -2) @ v
    return out, S


def pair_weights(r, k, log_w, u):
    """``W[t, i] = sum_d r_td k_id e^{b_{t-1,d} - b_id}`` for ``i < t``, ``r_t . u . k_t`` on the diagonal, 0 after."""
    N = r.shape[2]
    b = log_w.cumsum(dim=2)
    earlier = torch.ones(N, N, dtype=torch.bool, device=r.device).tril(-1)[..., None]  # i < t
    decay = ((b - log_w)[:, :, :, None] - b[:, :, None]).masked_fill(~earlier, float("-inf")).exp()
    pairs = torch.where(earlier, r[:, :, :, None] * k[:, :, None] * decay, 0).sum(-1)
    return pairs + torch.diag_embed((r * u[None, :, None] * k).sum(-1))


def rwkv6_recurrent(r, k, v, log_w, u, S0):
    """The RNN mode: ``o_t = r_t (S + diag(u) k_t^T v_t)``, then ``S = diag(w_t) S + k_t^T v_t``."""
    S, outs = S0, []
    w = log_w.exp()
    for t in range(r.shape[2]):
        r_t, k_t, v_t = r[:, :, t], k[:, :, t], v[:, :, t]
        bonus = (r_t * u * k_t).sum(-1, keepdim=True) * v_t
        outs.append(torch.einsum("bhd,bhde->bhe", r_t, S) + bonus)
        S = w[:, :, t, :, None] * S + k_t[..., :, None] * v_t[..., None, :]
    return torch.stack(outs, dim=2), S


def rwkv6_chunked(r, k, v, log_w, u, S0, *, chunk_size):
    """GLA's chunked form on ``k, v, log_w`` shifted one token later (a zero token first), read by ``r``.

    GLA's output at position ``t`` reads its state after position ``t``, which then holds tokens
    ``0 .. t-1`` decayed as RWKV-6's ``S_{t-1}``; the last token is added to the final state after."""
    gla = registry.get("gla").stateful_forms["chunked"]
    later = lambda t: F.pad(t, (0, 0, 1, 0))[:, :, :-1]  # noqa: E731  (token t-1 at position t)
    out, state = gla(r, later(k), later(v), causal=True, scale=1.0, initial_state=RecurrentState(0, S=S0),
                     gk=later(log_w), chunk_size=chunk_size)
    out = out + (r * u[None, :, None] * k).sum(-1, keepdim=True) * v
    S = log_w[:, :, -1, :, None].exp() * state["S"] + k[:, :, -1, :, None] * v[:, :, -1, None, :]
    return out, S


KERNELS = {"parallel": rwkv6_parallel, "chunked": rwkv6_chunked, "recurrent": rwkv6_recurrent}


def check_inputs(q, log_w, u, chunk_size):
    B, H, N, D = q.shape
    check_int("chunk_size", chunk_size)
    check_tensor("log_w", log_w, (B, H, N, D), q, what="(batch, heads, seq, head_dim) log decays <= 0")
    check_tensor("u", u, (H, D), q, what="(heads, head_dim) bonuses of the current token")


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, log_w=None, u=None, chunk_size=32):
        if not causal:
            raise ValueError("rwkv6 is a causal recurrence; pass causal=True")
        check_inputs(q, log_w, u, chunk_size)
        B, H, N, D = q.shape
        state = expect_state(initial_state, ("S",), {"S": (B, H, D, v.shape[-1])}, q)
        S0 = q.new_zeros(B, H, D, v.shape[-1]) if state is None else state["S"]
        k, v = repeat_kv(k, H), repeat_kv(v, H)
        kw = {"chunk_size": chunk_size} if kind == "chunked" else {}
        if N == 0:
            return v.new_zeros(B, H, 0, v.shape[-1]), RecurrentState(0 if state is None else state.length, S=S0)
        out, S = kernel(q, k, v, log_w, u, S0, **kw)
        return out, RecurrentState((0 if state is None else state.length) + N, S=S)

    form.__name__ = kind
    return form


def _weights(q, k, v, *, causal, mask, scale, log_w=None, u=None, chunk_size=32):
    """The attention matrix ``o = W v`` (no initial state): :func:`pair_weights`."""
    if not causal:
        raise ValueError("rwkv6 is a causal recurrence; pass causal=True")
    check_inputs(q, log_w, u, chunk_size)
    return pair_weights(q, repeat_kv(k, q.shape[1]), log_w, u)


def _inputs(q, k, v, generator):
    B, H, N, D = q.shape
    d = torch.randn(B, H, N, D, generator=generator, dtype=torch.float64) - 1.0
    u = 0.5 * torch.randn(H, D, generator=generator, dtype=torch.float64)
    return {"log_w": (-d.exp()).to(q.dtype), "u": u.to(q.dtype)}


register_stateful_mechanism(
    "rwkv6",
    forms={kind: _make(kind) for kind in KERNELS},
    family="attention-free",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(32, int, "tokens per chunk of the chunked form", low=1)},
    tensor_inputs=_inputs,
    inputs={"log_w": TensorInput("(B, H, N, Dk)", "per-token, per-channel log decays log(w_t) = -exp(d_t) <= 0"),
            "u": TensorInput("(H, Dk)", "per-channel bonus u of the current token")},
    tensor_inputs_per_token=("log_w",),
    state_size=lambda batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **_: (
        batch * heads * head_dim * (v_dim or head_dim)),
    complexity="O(N D^2)",
    summary="RWKV-6 (Finch): S = diag(w_t) S + k^T v with data-dependent decays, read before the update plus a bonus u",
    test_params={"chunk_size": 16},
    weights=_weights,
)
