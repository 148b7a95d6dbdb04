"""Multi-Token Attention, from Golovneva, Wang, Weston & Sukhbaatar, "Multi-Token Attention" (2025).

Each weight depends on several queries, keys and heads (section 3):

- key-query convolution before the softmax (eq. 4-5): with ``S = q k^T * scale``,

      A = softmax(Mask_-inf(Conv2d_theta(Mask_0(S)))),
      Conv(S)_ij = sum_{i'=0}^{c_q-1} sum_{j'=-floor(c_k/2)}^{ceil(c_k/2)-1} theta_{i',j'} S_{i-i', j-j'}

  per head: ``kernel`` ``(heads, c_q, c_k)`` holds ``theta[h, i', j' + floor(c_k/2)]``; the
  queries looked at are the current one and the ``c_q - 1`` before it; masked pairs (causal,
  ``mask``) are zero inside the convolution and excluded from the softmax;
- head mixing after the softmax (section 3.2): the heads form groups of ``c_h``; in group ``g``
  ``A'_{g c_h + j} = sum_i head_mix[g, i, j] A_{g c_h + i}`` (optional tensor input
  ``head_mix`` ``(heads / c_h, c_h, c_h)``; without it the heads are not mixed);
- the output is ``A' v``. The paper's group normalisation with depth scaling acts on the
  output, per head, in the layer: it is not part of this op.

An identity kernel (``theta[h, 0, floor(c_k/2)] = 1``, else 0) and identity head mixing give
softmax attention. The convolution reaches back over earlier queries' scores, which a KV
cache does not keep: there is no incremental form. Forms: the reference (the double sum
written out as shifted copies of the score map) and ``conv`` (one grouped ``conv2d``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.positions import causal_mask, repeat_kv
from ..params import TensorInput
from ..registry import MechanismSpec, register
from ..scores.user_mask import allowed_by
from ..validation import check_tensor

PAPER = "Multi-Token Attention"


def _check(q, kernel, head_mix):
    H = q.shape[1]
    if not isinstance(kernel, torch.Tensor) or kernel.ndim != 3:
        raise ValueError("kernel must be a tensor of shape (heads, c_q, c_k): the key-query convolution per head")
    check_tensor("kernel", kernel, (H, kernel.shape[1], kernel.shape[2]), q, what="(heads, c_q, c_k)")
    if head_mix is not None:
        if not isinstance(head_mix, torch.Tensor) or head_mix.ndim != 3 or head_mix.shape[1] != head_mix.shape[2] \
                or head_mix.shape[0] * head_mix.shape[1] != H:
            raise ValueError(f"head_mix must be a tensor of shape (heads / c_h, c_h, c_h) covering the {H} heads")
        check_tensor("head_mix", head_mix, tuple(head_mix.shape), q, what="(heads / c_h, c_h, c_h)")


def _scores(q, k, *, causal, mask, scale):
    """``(S with masked pairs at 0, allowed, additive part of the mask or None)``."""
    B, H, Nq, Nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    s = q @ repeat_kv(k, H).transpose(-1, -2) * scale
    allowed = causal_mask(Nq, Nk, q.device) if causal else torch.ones(Nq, Nk, dtype=torch.bool, device=q.device)
    additive = None
    if mask is not None:
        allowed = allowed & allowed_by(mask)
        if mask.dtype != torch.bool:
            additive = torch.where(torch.isneginf(mask), torch.zeros_like(mask), mask)
    allowed = allowed.expand(B, H, Nq, Nk)
    return s.masked_fill(~allowed, 0.0), allowed, additive


def _finish(conv, allowed, additive, head_mix):
    if additive is not None:
        conv = conv + additive
    logits = conv.masked_fill(~allowed, float("-inf"))
    row_max = logits.amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    e = torch.exp(logits - row_max)
    denom = e.sum(-1, keepdim=True)
    w = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    if head_mix is not None:
        B, H, Nq, Nk = w.shape
        groups, c = head_mix.shape[0], head_mix.shape[1]
        w = torch.einsum("bgiqk,gij->bgjqk", w.view(B, groups, c, Nq, Nk), head_mix).reshape(B, H, Nq, Nk)
    return w


def mta_weights(q, k, v, *, causal, mask, scale, kernel, head_mix=None):
    """``A'`` straight from eq. 4: every ``(i', j')`` term a shifted copy of the masked score map."""
    _check(q, kernel, head_mix)
    s0, allowed, additive = _scores(q, k, causal=causal, mask=mask, scale=scale)
    Nq, Nk = s0.shape[-2:]
    cq, ck = kernel.shape[1], kernel.shape[2]
    conv = torch.zeros_like(s0)
    for i_off in range(cq):
        for b in range(ck):
            j_off = b - ck // 2
            shifted = torch.zeros_like(s0)
            rows, cols = slice(i_off, Nq), slice(max(j_off, 0), Nk + min(j_off, 0))
            src_cols = slice(max(-j_off, 0), Nk - max(j_off, 0))
            shifted[:, :, rows, cols] = s0[:, :, : Nq - i_off, src_cols]
            conv = conv + kernel[None, :, i_off, b, None, None] * shifted
    return _finish(conv, allowed, additive, head_mix)


def mta_reference(q, k, v, *, causal, mask, scale, kernel, head_mix=None):
    return mta_weights(q, k, v, causal=causal, mask=mask, scale=scale, kernel=kernel, head_mix=head_mix) \
        @ repeat_kv(v, q.shape[1])


def mta_conv(q, k, v, *, causal, mask, scale, kernel, head_mix=None):
    """The convolution as one grouped ``conv2d`` (cross-correlation: the kernel flipped)."""
    _check(q, kernel, head_mix)
    s0, allowed, additive = _scores(q, k, causal=causal, mask=mask, scale=scale)
    H, cq, ck = kernel.shape
    left = (ck + 1) // 2 - 1
    padded = F.pad(s0, (left, ck - 1 - left, cq - 1, 0))
    conv = F.conv2d(padded, kernel.flip(1, 2)[:, None], groups=H)
    return _finish(conv, allowed, additive, head_mix) @ repeat_kv(v, H)


def _inputs(q, k, v, generator):
    H = q.shape[1]
    kernel = 0.3 * torch.randn(H, 3, 5, generator=generator, dtype=torch.float64)
    kernel[:, 0, 2] += 1.0
    c = 2 if H % 2 == 0 else 1
    head_mix = torch.eye(c, dtype=torch.float64) + 0.3 * torch.randn(H // c, c, c, generator=generator, dtype=torch.float64)
    return {"kernel": kernel.to(q.dtype), "head_mix": head_mix.to(q.dtype)}


register(
    MechanismSpec(
        name="mta",
        family="softmax",
        papers=(PAPER,),
        patterns=frozenset({"causal-self", "noncausal-self"}),
        reference=mta_reference,
        weights=mta_weights,
        fast={"conv": mta_conv},
        tensor_inputs=_inputs,
        inputs={"kernel": TensorInput("(H, c_q, c_k)", "key-query convolution over the score map"),
                "head_mix": TensorInput("(H / c_h, c_h, c_h)", "head mixing within groups of c_h heads, after the softmax",
                                        required=False)},
        complexity="O(N^2 c_q c_k)",
        summary="Multi-Token Attention: conv over (queries, keys) of the scores before softmax, head mixing after",
    )
)
