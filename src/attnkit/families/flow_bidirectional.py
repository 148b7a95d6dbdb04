"""Flow-Attention (Flowformer), non-causal: the paper's "normal" version, over all sources at once.

Wu, Wu, Xu, Wang & Long, "Flowformer: Linearizing Transformers with Conservation
Flows" (ICML 2022); the causal version, with its state, is ``flow``
(``families/flow.py``). With ``phi = sigmoid``, ``n`` queries (sinks) and ``m``
keys (sources), and ``eps`` added to every element of both sides of each dot
product as in the authors' code::

    I_i = 1 / (q_i . sum_j k_j),   O_j = 1 / (k_j . sum_i q_i)         incoming / outgoing flow
    alloc_i = sigmoid((n / m) q_i . sum_j k_j O_j)                      sink allocation
    comp_j  = m softmax_j(clamp(k_j . sum_i q_i I_i, -1, 1))           source competition
    out_i   = alloc_i (q_i I_i) sum_j k_j^T (v_j comp_j)

``q = sigmoid(scale q)``, ``k = sigmoid(k)`` (``scale=1.0`` is the paper's form).
The competition is a softmax over every source, so there is no causal or
incremental form. The reference materialises ``(q I) k^T`` (``n x m``); the
``factorised`` form computes ``k^T (v comp)`` first (linear in the length).
"""
from __future__ import annotations

import torch

from ..params import Param
from ..kernels.positions import repeat_kv
from ..registry import MechanismSpec, register
from .flow.forms import PAPER, eps_dot
from ..validation import check_float


def _flows(q, k, v, scale, eps):
    """``(reads, k, written, allocation, competition)``: out = allocation * reads (k^T written),
    ``written = v * competition``."""
    check_float("eps", eps, minimum=0)
    H = q.shape[1]
    q, k, v = torch.sigmoid(scale * q), torch.sigmoid(repeat_kv(k, H)), repeat_kv(v, H)
    n, m = q.shape[2], k.shape[2]
    incoming = 1.0 / eps_dot(q, k.sum(2, keepdim=True), eps)
    outgoing = 1.0 / eps_dot(k, q.sum(2, keepdim=True), eps)
    conserved_sink = eps_dot(q, (k * outgoing[..., None]).sum(2, keepdim=True), eps)
    conserved_source = eps_dot(k, (q * incoming[..., None]).sum(2, keepdim=True), eps).clamp(-1.0, 1.0)
    allocation = torch.sigmoid(conserved_sink * (n / m))
    competition = conserved_source.softmax(dim=-1) * m
    return q * incoming[..., None], k, v * competition[..., None], allocation[..., None], competition


def flow_weights(q, k, v, *, causal, mask, scale, eps):
    """The implicit attention matrix ``allocation_i (reads_i . k_j) competition_j``."""
    reads, k, _, allocation, competition = _flows(q, k, v, scale, eps)
    return allocation * (reads @ k.transpose(-1, -2)) * competition[..., None, :]


def flow_reference(q, k, v, *, causal, mask, scale, eps):
    reads, k, written, allocation, _ = _flows(q, k, v, scale, eps)
    return allocation * ((reads @ k.transpose(-1, -2)) @ written)


def flow_factorised(q, k, v, *, causal, mask, scale, eps):
    reads, k, written, allocation, _ = _flows(q, k, v, scale, eps)
    return allocation * (reads @ (k.transpose(-1, -2) @ written))


def _flops(batch, heads, q_len, kv_len, head_dim, causal):
    return 2 * batch * heads * (kv_len + q_len) * head_dim * head_dim


register(
    MechanismSpec(
        name="flow_bidirectional",
        family="linear",
        papers=(PAPER,),
        patterns=frozenset({"noncausal-self", "noncausal-cross"}),
        reference=flow_reference,
        weights=flow_weights,
        fast={"factorised": flow_factorised},
        params={"eps": Param(1e-6, float, "added to every flow dot product (Flowformer uses 1e-6)", low=0)},
        supports_mask=False,
        flops=_flops,
        complexity="O(N)",
        summary="Flowformer's non-causal Flow-Attention: source competition (softmax over sources) and sink "
                "allocation on sigmoid-mapped linear attention",
    )
)
