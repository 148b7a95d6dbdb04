"""The gated delta rule in its three forms: parallel (the reference), recurrent, chunked.

One recurrence covers three papers' mechanisms; the state ``S`` is ``(Dk, Dv)``
per key/value head and the read-out is ``o_t = S_t^T q_t``::

    S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T

- DeltaNet ("Parallelizing Linear Transformers with the Delta Rule over Sequence
  Length"): ``alpha_t = 1``;
- Gated DeltaNet ("Gated Delta Networks: Improving Mamba2 with Delta Rule"):
  ``alpha_t`` one scalar per head and token;
- KDA ("Kimi Linear: An Expressive, Efficient Attention Architecture"):
  ``alpha_t`` one value per key channel (channel-wise gate).

Gates are passed in log space, ``g = log(alpha) <= 0``: ``None`` (no gate),
``(B, H, N)`` (scalar) or ``(B, H, N, Dk)`` (channel-wise). Keys and
queries are L2-normalised first (``qk_l2norm``) as in the papers, which keeps
the transition's eigenvalues in ``[1 - beta, 1]``. ``beta`` is ``(B, H, N)``;
like every per-token input it is given per query head, so with GQA the key/value
heads are shared but each query head keeps its own state ``(B, H, Dk, Dv)``.

The chunked form is the WY / UT-transform algorithm of the DeltaNet paper,
extended with the decays as in the Gated DeltaNet and KDA papers; it is in
``delta_rule_chunked.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels.linear_scan import parallel_weights
from ...kernels.positions import repeat_kv


def prepare(q, k, v, g, *, scale, qk_l2norm):
    """Normalise q and k, fold the scale into q, expand k and v to the query heads (GQA).

    Returns ``q, k, v`` as ``(B, H, N, D)`` and ``g`` as ``(B, H, N, 1 or Dk)`` (or None).
    """
    if qk_l2norm:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    H = q.shape[1]
    if g is not None and g.ndim == 3:
        g = g.unsqueeze(-1)
    return q * scale, repeat_kv(k, H), repeat_kv(v, H), g


def zero_state(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    B, H, _, Dk = k.shape
    return k.new_zeros(B, H, Dk, v.shape[-1])


def delta_rule_parallel(q, k, v, beta, g=None, *, scale, initial_state=None, qk_l2norm=True):
    """Reference: the recurrence exactly as written, with the ``Dk x Dk`` transition materialised.

    Returns ``(out, final_state)``; run it in float64 to get the oracle.
    """
    q, k, v, g = prepare(q, k, v, g, scale=scale, qk_l2norm=qk_l2norm)
    S = zero_state(k, v) if initial_state is None else initial_state
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    outs = []
    for t in range(k.shape[2]):
        k_t, v_t, b_t = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        transition = eye - b_t * k_t[..., :, None] * k_t[..., None, :]
        if g is not None:
            transition = transition * g[:, :, t].exp()[..., None, :]  # (I - b k k^T) Diag(alpha_t)
        S = transition @ S + b_t * k_t[..., :, None] * v_t[..., None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], S))
    return torch.stack(outs, dim=2), S


def delta_rule_weights(q, k, beta, g=None, *, scale, qk_l2norm=True):
    """The implicit attention matrix ``W`` with ``o = W v`` (no initial state), ``(B, H, N, N)``.

    ``W[t, j] = q_t^T (A_t ... A_{j+1}) beta_j k_j`` with the transitions
    ``A_l = (I - beta_l k_l k_l^T) Diag(alpha_l)``: how much of ``v_j`` the state
    still holds for ``q_t``. The products are not formed one by one: with the decayed
    inner products ``A = (q k^T . decay)`` (causal, diagonal included) and ``L`` the
    strictly lower part of ``(k k^T . decay)``, the writes are
    ``u = (I + Diag(beta) L)^-1 Diag(beta) v`` (the UT transform) and ``o = A u``, so
    ``W = A (I + Diag(beta) L)^-1 Diag(beta)``.
    """
    q, k, _, g = prepare(q, k, k, g, scale=scale, qk_l2norm=qk_l2norm)
    if g is not None and g.shape[-1] == 1:
        g = g.squeeze(-1)
    N = k.shape[2]
    reads = parallel_weights(q, k, g, causal=True)
    earlier = parallel_weights(k, k, g, causal=True).tril(-1)
    eye = torch.eye(N, dtype=q.dtype, device=q.device)
    transform = eye + beta[..., :, None] * earlier
    writes = torch.linalg.solve_triangular(transform, torch.diag_embed(beta), upper=False, unitriangular=True)
    return reads @ writes


def delta_rule_recurrent(q, k, v, beta, g=None, *, scale, initial_state=None, qk_l2norm=True):
    """Token-by-token decoding form: a rank-1 correction per token, O(Dk Dv) work and memory.

    ``S <- Diag(alpha) S``; ``u = beta (v - S^T k)``; ``S <- S + k u^T``; ``o = S^T q``.
    """
    q, k, v, g = prepare(q, k, v, g, scale=scale, qk_l2norm=qk_l2norm)
    S = zero_state(k, v) if initial_state is None else initial_state
    rows = k.unsqueeze(-2).unbind(2)  # k_t as (B, H, 1, Dk)
    cols = k.unsqueeze(-1).unbind(2)  # k_t as (B, H, Dk, 1)
    alphas = g.exp().unsqueeze(-1).unbind(2) if g is not None else [None] * k.shape[2]
    outs = []
    for q_t, k_row, k_col, v_t, b_t, a_t in zip(
        q.unsqueeze(-2).unbind(2), rows, cols, v.unsqueeze(-2).unbind(2), beta[..., None, None].unbind(2), alphas
    ):
        if a_t is not None:
            S = S * a_t
        u = (v_t - k_row @ S) * b_t
        S = torch.addcmul(S, k_col, u)
        outs.append(q_t @ S)
    return torch.cat(outs, dim=2), S
