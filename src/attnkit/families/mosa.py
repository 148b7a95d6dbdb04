"""MoSA: Mixture of Sparse Attention (Piekos, Csordas and Schmidhuber, "Mixture of Sparse Attention:
Content-Based Learnable Sparse Attention via Expert-Choice Routing").

Each head is an expert that chooses its own tokens (expert-choice routing): a
router scores every token, the head keeps its ``k`` best and attends among
them only, causally by their original positions; the output is weighted by the
router score, which is how the router learns, and scattered back::

    r = sigmoid(X W_r) in R^T                           (router scores, one per token and head)
    r_topk, I = TopK(r, k),   k = T / sparsity
    Q, K, V = X_I W_Q, X_I W_K, X_I W_V                  (the selected tokens only)
    M_ij = 0 if I_i >= I_j else -inf
    A = softmax(Q K^T / sqrt(d) + M) V
    Y = Diag(r_topk) A,   scattered to the positions I (every other position: 0)

Here q, k and v of all tokens are given and the selected rows gathered, which
is the same as projecting only the selected tokens.

Conventions (checked against the authors' ``PureMoSA``): ``k = T // sparsity``
clamped to ``[2, T]``; the router scores ``router (B, H, T)`` are a tensor input
given already squashed (``attnkit.nn.Attention(..., mechanism="mosa")`` learns
``sigmoid(W_r x)`` with :class:`attnkit.nn.inputs.mosa.MoSARouter`); ties
between scores go to the earlier token; with GQA every query head routes alone
and reads the selected rows of its kv head. A position no head selects outputs
zeros in that head.

Causality: the attention among the selected tokens is causal, so future q, k
and v never change a past output. The *selection* is not: expert choice takes
the top-k over the whole sequence, so a later token's router score can push an
earlier token out of (or into) a head's choice, exactly as in the paper's
training. For the same reason there is no incremental decode: the paper's
selection needs the whole sequence, and neither the paper (as far as its text
was at hand here, the abstract and the method: the top-k over the whole
sequence; the KV-cache saving it reports counts the ``k`` tokens a head keeps)
nor the authors' code
(``PureMoSA.forward`` over a whole sequence, no cache and no step) gives a rule
for choosing tokens one at a time. A causal rule (a threshold on ``r``, or a
predictor of the top-k as Mixture-of-Depths uses for its own expert-choice
routing) would be another model, trained differently, so none is invented here.

Forms: ``reference`` (the mask ``M`` over all ``T x T`` pairs materialised) and
``gathered`` (the ``k`` selected rows gathered in position order, so ``M`` is the
causal mask of a ``k x k`` SDPA call): ``O(k^2 + T)`` per head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.positions import repeat_kv
from ..params import Param, TensorInput
from ..reference import materialised_weights
from ..registry import MechanismSpec, register
from ..validation import check_tensor

PAPER = "Mixture of Sparse Attention: Content-Based Learnable Sparse Attention via Expert-Choice Routing"


def mosa_inputs(q, k, v, generator=None) -> dict:
    """Example router scores in (0, 1) ``(B, H, T)`` for given q, k, v."""
    B, H, T = q.shape[0], q.shape[1], q.shape[2]
    return {"router": torch.rand(B, H, T, generator=generator, dtype=q.dtype).to(q.device)}


def selected_count(tokens: int, sparsity: int) -> int:
    """``k``: the tokens each head keeps, ``T // sparsity`` clamped to ``[2, T]``."""
    return min(max(tokens // sparsity, 2), tokens)


def mosa_selection(router: torch.Tensor, sparsity: int) -> torch.Tensor:
    """Each head's selected positions ``(B, H, k)`` in increasing order: its top-k router scores, ties to the earlier."""
    order = router.detach().sort(dim=-1, descending=True, stable=True).indices
    return order[..., : selected_count(router.shape[-1], sparsity)].sort(dim=-1).values


def _check(q, router):
    B, H, T = q.shape[0], q.shape[1], q.shape[2]
    check_tensor("router", router, (B, H, T), q, what="(batch, heads, tokens)")


def _reference(q, k, v, *, causal, mask, scale, sparsity, router):
    weights = _weights(q, k, v, causal=causal, mask=mask, scale=scale, sparsity=sparsity, router=router)
    return weights @ repeat_kv(v, q.shape[1])


def _weights(q, k, v, *, causal, mask, scale, sparsity, router):
    """The attention matrix with each chosen query's router score folded in: softmax among the chosen
    tokens times ``router_i`` (rows of unchosen queries are zero)."""
    _check(q, router)
    B, H, T = router.shape
    chosen = torch.zeros(B, H, T, dtype=torch.bool, device=q.device)
    chosen.scatter_(2, mosa_selection(router, sparsity), True)
    allowed = chosen[..., :, None] & chosen[..., None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    weights = materialised_weights(q, k, causal=False, mask=allowed, scale=scale)
    return weights * torch.where(chosen, router, torch.zeros_like(router))[..., None]


def _gathered(q, k, v, *, causal, mask, scale, sparsity, router):
    _check(q, router)
    B, H, T, D = q.shape
    Dv = v.shape[3]
    index = mosa_selection(router, sparsity)  # (B, H, k), increasing positions
    n = index.shape[-1]
    qs = q.gather(2, index[..., None].expand(B, H, n, D))
    ks = repeat_kv(k, H).gather(2, index[..., None].expand(B, H, n, D))
    vs = repeat_kv(v, H).gather(2, index[..., None].expand(B, H, n, Dv))
    att = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)
    weighted = att * router.gather(2, index)[..., None]
    return torch.zeros(B, H, T, Dv, dtype=att.dtype, device=q.device).scatter(2, index[..., None].expand(B, H, n, Dv),
                                                                              weighted)


def _flops(batch, heads, q_len, kv_len, head_dim, causal, sparsity=8, **_):
    n = selected_count(q_len, sparsity)
    pairs = n * (n + 1) // 2 if causal else n * n
    return 4 * batch * heads * head_dim * pairs


register(MechanismSpec(
    name="mosa",
    family="content-sparse",
    papers=(PAPER,),
    patterns=frozenset({"causal-self", "noncausal-self"}),
    reference=_reference,
    fast={"gathered": _gathered},
    weights=_weights,
    params={"sparsity": Param(8, int, "each head keeps tokens // sparsity tokens (at least 2)", low=1)},
    test_params={"sparsity": 4},
    inputs={"router": TensorInput("(B, H, T)", "router scores sigmoid(X W_r) in (0, 1), one per token and head")},
    tensor_inputs=mosa_inputs,
    supports_mask=False,
    flops=_flops,
    complexity="O(N^2 / sparsity^2 + N)",
    summary="each head picks its top-k tokens by a learned router (expert choice) and attends among them; the choice "
            "looks ahead (top-k over the whole sequence), so no decode: neither the paper nor the authors' code "
            "gives a causal selection rule",
))
