"""Titans' neural memory: a small MLP learned at test time by gradient steps with momentum and forgetting.

Behrouz, Zhong & Mirrokni, "Titans: Learning to Memorize at Test Time" (2025).
Per head the memory is ``M(x) = silu(x W1) W2``; on token ``t`` it takes one step on
the associative loss ``l(M; k_t, v_t) = ||M(k_t) - v_t||^2`` ("surprise")::

    S_t = eta_t S_{t-1} - theta_t grad l(M'; k_t, v_t)      (momentum: past surprise)
    M_t = (1 - alpha_t) M_{t-1} + S_t                        (forgetting)
    y_t = M_t(q_t)                                           (retrieval, no update)

As in the paper's parallel training, gradients inside a chunk of ``b`` tokens are
taken at the memory ``M'`` of the chunk's start (``b = 1``: plain online gradient
descent), so ``b`` (``chunk_size``) is part of the equations. State: ``W1, W2``,
the momenta ``S1, S2`` and the chunk-start memory ``W1s, W2s``.

Bounded surprise (``max_grad_norm``, optional; the paper has no bound): each token's
gradient, per weight matrix, is rescaled to the norm ``m tanh(|g| / m)`` (``m`` =
``max_grad_norm``): unchanged while small, never above ``m``. This is the soft clamp of
titans-pytorch's ``max_grad_norm`` option, in a form that leaves small gradients as they
are (titans-pytorch's maps the norm into ``[m/2, m)``, raising small ones). With it every
momentum step is at most ``theta m / (1 - eta)`` and forgetting keeps the memory bounded;
without it the gradient grows with the cube of the memory's weights, and an inner descent
whose step an outer optimiser has pushed to the edge of stability diverges within a window.

Forms: ``titans_parallel`` (token loop, gradients by ``torch.func.grad``: the
reference), ``titans_recurrent`` (token loop, closed-form gradients) and
``titans_chunked`` (closed-form gradients of a whole chunk at once and the
momentum / forgetting recurrences as ``b x b`` coefficient matrices).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels.nonfinite import hold_back_nonfinite, poison


def _memory(x, W1, W2):
    return F.silu(x @ W1) @ W2


def _loss(W1, W2, k, v):
    return ((_memory(k, W1, W2) - v) ** 2).sum()


def _grads(k, v, W1, W2, max_grad_norm=None):
    """Closed-form gradients of ``||silu(k W1) W2 - v||^2`` per row of k: ``(2 k^T delta, 2 h^T r)`` factors
    (``r`` and ``delta`` already rescaled by the soft clamp when ``max_grad_norm`` is given)."""
    z = k @ W1
    h = F.silu(z)
    r = h @ W2 - v
    sig = torch.sigmoid(z)
    delta = (r @ W2.transpose(-1, -2)) * (sig * (1 + z * (1 - sig)))  # silu'(z) = s (1 + z (1 - s))
    if max_grad_norm is not None:  # |2 a^T b| = 2 |a| |b| for one token's outer product
        delta = delta * _clamp_scale(2 * k.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True), max_grad_norm)
        r = r * _clamp_scale(2 * h.norm(dim=-1, keepdim=True) * r.norm(dim=-1, keepdim=True), max_grad_norm)
    return h, r, delta


def _clamp_scale(norm, max_norm):
    """The factor taking a gradient of norm ``norm`` to ``max_norm tanh(norm / max_norm)``."""
    norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return max_norm * torch.tanh(norm / max_norm) / norm


def _clamp(G, max_norm):
    """Soft-clamp each token's gradient matrix ``G (.., N, a, b)`` (the reference's way: by its norm)."""
    return G * _clamp_scale(G.flatten(-2).norm(dim=-1)[..., None, None], max_norm)


def titans_parallel(q, k, v, theta, eta, alpha, *, b, start, state, max_grad_norm=None):
    """Reference: the three equations token by token; each chunk's surprise gradients by autograd
    (``torch.func.grad``) at the chunk-start memory."""
    W1, W2, S1, S2, W1s, W2s = state
    per_token = torch.vmap(torch.func.grad(_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))
    chunk_grads = torch.vmap(torch.vmap(per_token))  # over batch and heads
    outs = []
    for t in range(k.shape[2]):
        into = (start + t) % b
        if into == 0:
            W1s, W2s = W1, W2
        if into == 0 or t == 0:
            end = min(k.shape[2], t + b - into)
            G1, G2 = chunk_grads(W1s, W2s, k[:, :, t:end], v[:, :, t:end])
            if max_grad_norm is not None:
                G1, G2 = _clamp(G1, max_grad_norm), _clamp(G2, max_grad_norm)
            first = t
        th, et, al = (x[:, :, t, None, None] for x in (theta, eta, alpha))
        S1, S2 = et * S1 - th * G1[:, :, t - first], et * S2 - th * G2[:, :, t - first]
        W1, W2 = (1 - al) * W1 + S1, (1 - al) * W2 + S2
        outs.append(_memory(q[:, :, t, None, :], W1, W2))
    return torch.cat(outs, dim=2), (W1, W2, S1, S2, W1s, W2s)


def titans_recurrent(q, k, v, theta, eta, alpha, *, b, start, state, max_grad_norm=None):
    """Decoding: one token at a time with the closed-form outer-product gradients."""
    W1, W2, S1, S2, W1s, W2s = state
    outs = []
    for t in range(k.shape[2]):
        if (start + t) % b == 0:
            W1s, W2s = W1, W2
        k_t = k[:, :, t, None, :]
        h, r, delta = _grads(k_t, v[:, :, t, None, :], W1s, W2s, max_grad_norm)
        th, et, al = (x[:, :, t, None, None] for x in (theta, eta, alpha))
        S1 = et * S1 - th * 2 * k_t.transpose(-1, -2) @ delta
        S2 = et * S2 - th * 2 * h.transpose(-1, -2) @ r
        W1, W2 = (1 - al) * W1 + S1, (1 - al) * W2 + S2
        outs.append(_memory(q[:, :, t, None, :], W1, W2))
    return torch.cat(outs, dim=2), (W1, W2, S1, S2, W1s, W2s)


def titans_chunked(q, k, v, theta, eta, alpha, *, b, start, state, max_grad_norm=None):
    """Tokens up to the next multiple of ``b`` go token by token, then whole chunks in matmuls."""
    N = k.shape[2]
    (k, v, theta, eta, alpha), poisoned = hold_back_nonfinite(k, v, theta, eta, alpha)  # NaN stays causal
    lead = min(-start % b, N)
    outs = []
    # split, not slicing in the loop: each slice's backward would zero-fill a full-length gradient
    first, *chunks = zip(*(x.split([lead, *(min(b, N - a) for a in range(lead, N, b))], dim=2)
                           for x in (q, k, v, theta, eta, alpha)))
    if lead:
        out, state = titans_recurrent(*first, b=b, start=start, state=state, max_grad_norm=max_grad_norm)
        outs.append(out)
    for pieces in chunks:
        out, state = _chunk(*pieces, state, max_grad_norm)
        outs.append(out)
    return poison(torch.cat(outs, dim=2), tuple(state), poisoned)


def _chunk(q, k, v, theta, eta, alpha, state, max_grad_norm=None):
    """One aligned chunk. With ``a_i = prod (1 - alpha)``, ``e_i = prod eta`` (inside the chunk),
    ``M_i = a_i M0 + s_i S0 + sum_j C_ij G_j`` where ``s = D_a e`` and ``C = -(D_a D_e) diag(theta)``
    (``D_a[i, m] = a_i / a_m`` for ``m <= i``, ``D_e[m, j] = e_m / e_j`` for ``j <= m``)."""
    W1, W2, S1, S2, _, _ = state
    h, r, delta = _grads(k, v, W1, W2, max_grad_norm)  # gradients at the chunk-start memory W1, W2
    D_a, D_e = _ratios(1 - alpha), _ratios(eta)
    a, e = (1 - alpha).cumprod(-1)[..., None], eta.cumprod(-1)
    s = D_a @ e[..., None]  # (B, H, r, 1)
    C = -(D_a @ D_e) * theta[..., None, :]
    u = a * (q @ W1) + s * (q @ S1) + 2 * ((q @ k.transpose(-1, -2)) * C) @ delta
    hq = F.silu(u)
    out = a * (hq @ W2) + s * (hq @ S2) + 2 * ((hq @ h.transpose(-1, -2)) * C) @ r
    c_last = C[..., -1, :, None]  # coefficients of the last token's memory
    m_last = -theta[..., :, None] * D_e[..., -1, :, None]  # momentum at the end
    a_end, s_end, e_end = a[..., -1, :, None], s[..., -1, :, None], e[..., -1, None, None]
    W1n = a_end * W1 + s_end * S1 + 2 * k.transpose(-1, -2) @ (c_last * delta)
    W2n = a_end * W2 + s_end * S2 + 2 * h.transpose(-1, -2) @ (c_last * r)
    S1n = e_end * S1 + 2 * k.transpose(-1, -2) @ (m_last * delta)
    S2n = e_end * S2 + 2 * h.transpose(-1, -2) @ (m_last * r)
    return out, (W1n, W2n, S1n, S2n, W1, W2)


def _ratios(x):
    """``prod_{j < m <= i} x_m`` for ``j <= i``, else 0 (products, not log differences: x may be any real)."""
    n = x.shape[-1]
    later = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)  # [j, m]: m > j
    prods = torch.where(later, x[..., None, :], torch.ones_like(x[..., None, :])).cumprod(-1)  # [j, i]
    return prods.transpose(-1, -2).tril()
