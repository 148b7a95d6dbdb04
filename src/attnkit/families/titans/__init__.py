"""Titans-style test-time memory (``attnkit.families.titans.forms``) as an attention mechanism.

Behrouz, Zhong & Mirrokni, "Titans: Learning to Memorize at Test Time" (2025): the
long-term memory module alone, keys/values written by gradient steps on
``||M(k) - v||^2`` with momentum and forgetting, queries read by ``M(q)``
(``scale`` multiplies q). Tensor inputs: per token and query head ``theta``
(step size), ``eta`` (momentum decay), ``alpha`` (forgetting), all ``(B, H, N)``
in ``(0, 1)``; queries and keys are L2-normalised first as in the paper (``qk_l2norm``);
the memory's initial weights ``w1 (H, Dk, hidden)`` and
``w2 (H, hidden, Dv)`` (learned per layer). ``chunk_size`` is the paper's
mini-batch size ``b`` (gradients inside a chunk are taken at its start). ``max_grad_norm`` (default None,
the paper) soft-clamps each token's surprise gradient per weight matrix to a norm below it
(see :mod:`.forms`): the bound that keeps a trained layer's inner descent finite. The
layer computing the gates is ``attnkit.nn.inputs.titans.TitansInputs``.
Causal self-attention only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...params import Param, TensorInput
from . import forms as titans
from ...state import RecurrentState, expect_state
from ...kernels.positions import repeat_kv
from ...validation import check_int, check_tensor
from ...builders.stateful import CAUSAL_ONLY, register_stateful_mechanism

PAPER = "Titans: Learning to Memorize at Test Time"
KERNELS = {"parallel": titans.titans_parallel, "chunked": titans.titans_chunked, "recurrent": titans.titans_recurrent}
NAMES = ("W1", "W2", "S1", "S2", "W1s", "W2s")
GATES = ("theta", "eta", "alpha")


def _make(kind):
    kernel = KERNELS[kind]

    def form(q, k, v, *, causal, scale, initial_state=None, theta=None, eta=None, alpha=None, w1=None, w2=None,
             chunk_size=16, qk_l2norm=True, max_grad_norm=None):
        if not causal:
            raise ValueError("the Titans memory is a causal recurrence; pass causal=True")
        check_int("chunk_size", chunk_size)
        B, H, N, Dk = q.shape
        Dv = v.shape[-1]
        gates = {"theta": theta, "eta": eta, "alpha": alpha}
        for name, t in (*gates.items(), ("w1", w1), ("w2", w2)):
            if t is None:
                raise ValueError(f"{name} is required: see attnkit.spec('titans').summary")
        for name, t in gates.items():
            check_tensor(name, t, (B, H, N), q, what="(batch, heads, seq) values in (0, 1)")
        hidden = w1.shape[-1] if isinstance(w1, torch.Tensor) and w1.ndim == 3 else 0
        check_tensor("w1", w1, (H, Dk, hidden), q, what="(heads, head_dim, hidden) initial memory weights")
        check_tensor("w2", w2, (H, hidden, Dv), q, what="(heads, hidden, v_head_dim) initial memory weights")
        shapes = {n: (B, H, Dk, hidden) if n in ("W1", "S1", "W1s") else (B, H, hidden, Dv) for n in NAMES}
        state = expect_state(initial_state, NAMES, shapes, q)
        start = initial_state.length if initial_state is not None else 0
        if state is None:
            W1, W2 = w1.expand(B, H, Dk, hidden), w2.expand(B, H, hidden, Dv)
            tensors = (W1, W2, torch.zeros_like(W1), torch.zeros_like(W2), W1, W2)
        else:
            tensors = tuple(state[n] for n in NAMES)
        if qk_l2norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out, final = kernel(q * scale, repeat_kv(k, H), repeat_kv(v, H), theta, eta, alpha,
                            b=chunk_size, start=start, state=tensors, max_grad_norm=max_grad_norm)
        return out, RecurrentState(start + N, **dict(zip(NAMES, final)))

    form.__name__ = kind
    return form


def read_memory(q, W1, W2, *, scale, qk_l2norm=True):
    """``M*(q) = silu(q W1) W2`` per head, without writing: what the mechanism's queries read, for a
    memory ``W1 (B or 1, H, Dk, hidden)``, ``W2 (.., H, hidden, Dv)`` (a state's or the initial weights).
    ``q`` is normalised and scaled as the mechanism does."""
    if qk_l2norm:
        q = F.normalize(q, dim=-1)
    return titans._memory(q * scale, W1, W2)


def _inputs(q, k, v, generator):
    B, H, N, D = q.shape
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, H, N, generator=generator, dtype=torch.float64)  # noqa: E731
    w1 = torch.randn(H, D, D, generator=generator, dtype=torch.float64) / D**0.5
    w2 = torch.randn(H, D, v.shape[-1], generator=generator, dtype=torch.float64) / D**0.5
    out = {"theta": u(0.01, 0.1), "eta": u(0.3, 0.8), "alpha": u(0.01, 0.1), "w1": w1, "w2": w2}
    return {n: t.to(q.dtype) for n, t in out.items()}


def _state_size(batch, heads, kv_heads, seq_len, head_dim, v_dim=None, **params):
    """Three copies (memory, momentum, chunk-start memory) of W1 and W2, hidden = head_dim."""
    return batch * heads * 3 * head_dim * (head_dim + (v_dim or head_dim))


def _flops(batch, heads, q_len, kv_len, head_dim, causal, chunk_size=16):
    """Chunked form: gradients, b x b mixing and the memory read, ~ (10 D^2 + 4 b D) per token."""
    return 2 * batch * heads * q_len * (10 * head_dim * head_dim + 4 * chunk_size * head_dim)


_FORMS = {kind: _make(kind) for kind in KERNELS}

register_stateful_mechanism(
    "titans",
    weights_note="the memory is an MLP trained by gradient steps on the keys and values: its read-out is not a weighted sum of the values, so there is no attention matrix",
    forms=_FORMS,
    family="test-time-memory",
    papers=(PAPER,),
    patterns=CAUSAL_ONLY,
    params={"chunk_size": Param(16, int, 'tokens per chunk (the memory updates once per chunk)', low=1),
            "qk_l2norm": Param(True, bool, 'l2-normalise q and k per head, as the paper does'),
            "max_grad_norm": Param(None, float, "soft bound on each token's surprise gradient norm per weight "
                                   "matrix (m tanh(|g| / m)); None: unbounded, as the paper", low=0, low_open=True,
                                   optional=True)},
    tensor_inputs=_inputs,
    inputs={"theta": TensorInput("(B, H, N)", "memory learning rate per token, in (0, 1)"),
            "eta": TensorInput("(B, H, N)", "momentum decay per token, in (0, 1)"),
            "alpha": TensorInput("(B, H, N)", "forgetting per token, in (0, 1)"),
            "w1": TensorInput("(H, Dk, hidden)", "initial first-layer weights of the memory MLP"),
            "w2": TensorInput("(H, hidden, Dv)", "initial second-layer weights of the memory MLP")},
    tensor_inputs_per_token=GATES,
    flops=_flops,
    state_size=_state_size,
    complexity="O(N)",
    summary="MLP memory silu(x W1) W2 written by gradient steps on ||M(k) - v||^2 with momentum "
            "(theta, eta) and forgetting (alpha); read by M(q); w1, w2 = initial memory",
    test_params={"chunk_size": 8},
)
