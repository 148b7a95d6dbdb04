"""Luong et al.'s global and local attention.

Luong, Pham & Manning, "Effective Approaches to Attention-based Neural Machine
Translation" (2015), section 3. The target state ``h_t`` is compared with every
source state ``h_s`` by one of three scores (eq. 8),

    score(h_t, h_s) = h_t^T h_s              dot
                      h_t^T W_a h_s          general
                      v_a^T tanh(W_a [h_t; h_s])   concat

and ``a_t(s) = softmax_s(score(h_t, h_s))``, ``c_t = sum_s a_t(s) h_s`` (global
attention). In :func:`attnkit.attention` terms: *dot* is ``"softmax"`` with
``scale=1.0``, *concat* is ``"additive"`` (:mod:`attnkit.families.additive`),
and *general* is registered here as ``luong_general`` with the tensor input
``w_a`` ``(heads, head_dim, head_dim)``; ``scale`` multiplies the score as in
softmax attention (``scale=1.0`` is the paper's).

Local attention (section 3.2) looks at ``[p_t - D, p_t + D]`` only:

- *local-m* (monotonic) sets ``p_t = t``: the ``sliding_window`` mechanism with
  ``window=D`` and ``border="clamp"`` (non-causal), or a boolean mask;
- *local-p* (predictive) predicts ``p_t = S sigmoid(v_p^T tanh(W_p h_t))`` and
  multiplies the windowed softmax by a Gaussian centred there (eq. 10),
  ``a_t(s) = align(h_t, h_s) exp(-(s - p_t)^2 / (2 sigma^2))``, ``sigma = D / 2``.
  The Gaussian comes after the normalisation, so the weights no longer sum to
  one and this is not a score modifier: :func:`local_p_weights` computes them
  and :class:`attnkit.nn.LuongAttention` uses them.
"""
from __future__ import annotations

import torch

from ..builders.score_pipeline import register_score_mechanism
from ..kernels.dense import sdpa_attention
from ..kernels.positions import repeat_kv
from ..params import TensorInput
from ..validation import check_int, check_tensor

LUONG = "Effective Approaches to Attention-based Neural Machine Translation"


def _check_w_a(q, k, w_a):
    check_tensor("w_a", w_a, (q.shape[1], q.shape[3], k.shape[3]), q, what="(heads, head_dim, head_dim)")


def _projected(q, k, w_a):
    """``q_i^T W_a`` per head: the general score is then a dot product with ``k_j``."""
    _check_w_a(q, k, w_a)
    return q @ w_a


def _tiled_mod(q, k, *, scale, w_a, **_):
    q_w, k = _projected(q, k, w_a), repeat_kv(k, q.shape[1])
    offset = k.shape[2] - q.shape[2]

    def mod(scores, q_pos, k_pos):
        return (q_w[:, :, q_pos - offset] @ k[:, :, k_pos].transpose(-1, -2)) * scale

    return mod


def _reference_mod(q, k, *, scale, w_a, **_):
    _check_w_a(q, k, w_a)
    k = repeat_kv(k, q.shape[1])
    return lambda scores, q_pos, k_pos: torch.einsum("bhid,hde,bhje->bhij", q, w_a, k) * scale


def _sdpa_form(q, k, v, *, causal, mask, scale, w_a, q_chunk=None, kv_chunk=None):
    """``q W_a`` once, then SDPA: the general score is a dot product of the projected queries."""
    return sdpa_attention(_projected(q, k, w_a), k, v, causal=causal, mask=mask, scale=scale)


register_score_mechanism(
    "luong_general",
    papers=(LUONG,),
    make_mod=_tiled_mod,
    make_reference_mod=_reference_mod,
    inputs={"w_a": TensorInput("(H, Dk, Dk)", "bilinear score matrix W_a")},
    tensor_inputs=lambda q, k, v, g: {
        "w_a": torch.randn(q.shape[1], q.shape[3], k.shape[3], generator=g, dtype=q.dtype) * q.shape[3] ** -0.5},
    extra_fast={"sdpa": _sdpa_form},
    summary="Luong's general score q^T W_a k (times scale), softmax; SDPA on q W_a",
)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``allowed``; a row with nothing allowed is zeros (no NaN)."""
    masked = scores.masked_fill(~allowed, float("-inf"))
    row_max = masked.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    e = torch.exp(masked - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def local_p_weights(scores: torch.Tensor, centre: torch.Tensor, half_width: int,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Luong's local-p weights ``softmax over [p_t - D, p_t + D] of the scores, times the Gaussian``.

    ``scores (..., T, S)``; ``centre`` ``(..., T)`` the predicted positions ``p_t`` in
    ``[0, S]``; ``half_width`` the window's ``D`` (``sigma = D / 2``); ``mask``
    (boolean, broadcastable to the scores) marks the source positions that exist.
    Positions outside the window (centred on ``p_t`` rounded down, as in the paper's
    integer window) get weight 0; a row with no position allowed is all zeros.
    """
    check_int("half_width", half_width)
    if centre.shape != scores.shape[:-1]:
        raise ValueError(f"centre must have shape {tuple(scores.shape[:-1])} (one position per query), "
                         f"got {tuple(centre.shape)}")
    s_pos = torch.arange(scores.shape[-1], device=scores.device, dtype=scores.dtype)
    left = torch.floor(centre).unsqueeze(-1) - half_width
    allowed = (s_pos >= left) & (s_pos <= left + 2 * half_width)
    if mask is not None:
        allowed = allowed & mask
    align = masked_softmax(scores, allowed)
    sigma = half_width / 2
    return align * torch.exp(-((s_pos - centre.unsqueeze(-1)) ** 2) / (2 * sigma ** 2))
