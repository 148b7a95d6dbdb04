"""Local Linear Attention, blockwise: the moments form with one d x d solve per query.

The paper's estimator (see :mod:`attnkit.families.local_linear`) is, per query
``q`` with softmax weights ``s_j`` over its visible keys,

    o = sum_j s_j (1 - rho . (k_j - q)) v_j / (1 - rho . mu),
    mu = sum_j s_j (k_j - q),   Sigma = sum_j s_j (k_j - q)(k_j - q)^T + lambda I,   rho = Sigma^-1 mu.

Sherman-Morrison turns it into the centred form computed here::

    o = vbar + sum_j s_j (k_j . r) v_j - vbar (kbar . r),   r = (C + lambda I)^-1 (q - kbar),
    kbar = sum_j s_j k_j,  vbar = sum_j s_j v_j,  C = sum_j s_j k_j k_j^T - kbar kbar^T

(``Sigma = C + lambda I + mu mu^T`` and ``mu = kbar - q``, so ``rho / (1 - rho . mu) = -r``
and the ``1 - rho . mu`` cancellation of the paper's form disappears). Queries are
processed in blocks of ``q_block``: the weights ``(q_block, Nk)``, the key second
moments as one GEMM ``s @ (k k^T)`` over key blocks of ``kv_block`` (the
``Theta(n d^2)`` term, never held for all queries at once), a batched solve, and
two attention-like GEMMs. Keys are shifted by their mean first (C is
shift-invariant), which keeps ``k k^T - kbar kbar^T`` from cancelling. Causal
queries read only the keys they can see.
"""
from __future__ import annotations

import torch

from ...kernels.positions import repeat_kv


def local_linear_blockwise(q, k, v, weights, *, ridge: float, q_block: int, kv_block: int, causal: bool):
    """``weights(a, b, end) -> (B, H, b - a, end)``: softmax weights of queries ``a:b`` over keys ``:end``."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    shift = k.mean(dim=2, keepdim=True)
    k, q = k - shift, q - shift
    eye = torch.eye(D, dtype=q.dtype, device=q.device)
    outs = []
    for a in range(0, Nq, q_block):
        b = min(Nq, a + q_block)
        end = Nk - Nq + b if causal else Nk
        if end <= 0:  # bottom-right aligned: these queries see no key
            outs.append(q.new_zeros(B, H, b - a, v.shape[-1]))
            continue
        s = weights(a, b, end)
        kk, vv = k[:, :, :end], v[:, :, :end]
        kbar, vbar = s @ kk, s @ vv
        second = q.new_zeros(B, H, b - a, D * D)
        for j in range(0, end, kv_block):
            kj = kk[:, :, j : j + kv_block]
            second = second + s[..., j : j + kv_block] @ (kj[..., :, None] * kj[..., None, :]).flatten(-2)
        cov = second.view(B, H, b - a, D, D) - kbar[..., :, None] * kbar[..., None, :]
        r = solve(cov + ridge * eye, (q[:, :, a:b] - kbar)[..., None])[..., 0]
        slope = (s * (r @ kk.transpose(-1, -2))) @ vv
        outs.append(vbar + slope - vbar * (kbar * r).sum(-1, keepdim=True))
    return torch.cat(outs, dim=2)


def solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A^{-1} b``; half-precision systems are solved in float32 and cast back (torch has no half LU)."""
    if A.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.solve(A.float(), b.float()).to(A.dtype)
    return torch.linalg.solve(A, b)
