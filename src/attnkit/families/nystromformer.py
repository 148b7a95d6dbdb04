"""Nystromformer: softmax attention through landmark queries and keys.

Xiong et al., "Nystromformer: A Nystrom-Based Algorithm for Approximating
Self-Attention" (2021). With ``m`` landmarks ``Q~, K~`` (segment means of Q and K),

    S^ = softmax(Q K~^T s) Z softmax(Q~ K^T s),   Z ~ softmax(Q~ K~^T s)^+

where the pseudo-inverse is the paper's iteration (``iterations`` = 6 steps of
``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4`` from ``Z_0 = A^T / (|A|_1
|A|_inf)``, per matrix). The reference materialises ``S^`` (``N x N``) and
multiplies by V; the fast form multiplies right to left, O(N m). Landmarks
are adaptive average pools (segment means when ``m`` divides N), ``m =
min(landmarks, Nq, Nk)``. Non-causal; the paper's skip convolution on V is in
the block, :class:`attnkit.nn.NystromAttention`.
"""
from __future__ import annotations

import torch

from ..params import Param
from ..kernels.positions import repeat_kv
from ..registry import MechanismSpec, register
from .agent import agent_tokens
from ..validation import check_int

PAPER = "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention"


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """The paper's Moore-Penrose iteration, initialised per matrix."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm1 = a.abs().sum(dim=-2).amax(dim=-1)[..., None, None]
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)[..., None, None]
    z = a.transpose(-1, -2) / (norm1 * norm_inf)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _parts(q, k, v, scale, landmarks, iterations):
    check_int("landmarks", landmarks)
    check_int("iterations", iterations, minimum=0)
    H = q.shape[1]
    k, v = repeat_kv(k, H), repeat_kv(v, H)
    m = min(landmarks, q.shape[2], k.shape[2])
    q_land, k_land = agent_tokens(q, m), agent_tokens(k, m)
    left = (q @ k_land.transpose(-1, -2) * scale).softmax(dim=-1)
    middle = iterative_pinv((q_land @ k_land.transpose(-1, -2) * scale).softmax(dim=-1), iterations)
    right = (q_land @ k.transpose(-1, -2) * scale).softmax(dim=-1)
    return left, middle, right, v


def nystrom_weights(q, k, v, *, causal, mask, scale, landmarks, iterations):
    """The approximated attention matrix ``F A^+ B`` (landmark softmaxes around the pseudo-inverse)."""
    left, middle, right, _ = _parts(q, k, v, scale, landmarks, iterations)
    return left @ middle @ right


def nystrom_reference(q, k, v, *, causal, mask, scale, landmarks, iterations):
    weights = nystrom_weights(q, k, v, causal=causal, mask=mask, scale=scale, landmarks=landmarks,
                              iterations=iterations)
    return weights @ repeat_kv(v, q.shape[1])


def nystrom_fast(q, k, v, *, causal, mask, scale, landmarks, iterations):
    left, middle, right, v = _parts(q, k, v, scale, landmarks, iterations)
    return left @ (middle @ (right @ v))


def _flops(batch, heads, q_len, kv_len, head_dim, causal, landmarks=64):
    return 4 * batch * heads * landmarks * (q_len + kv_len) * head_dim


register(
    MechanismSpec(
        name="nystromformer",
        family="linear",
        papers=(PAPER,),
        patterns=frozenset({"noncausal-self", "noncausal-cross"}),
        reference=nystrom_reference,
        weights=nystrom_weights,
        fast={"landmarks": nystrom_fast},
        params={"landmarks": Param(64, int, 'landmarks m (segment means of Q and K)', low=1),
                "iterations": Param(6, int, 'steps of the iterative pseudo-inverse', low=0)},
        supports_mask=False,
        flops=_flops,
        complexity="O(N m)",
        summary="Nystrom approximation of softmax attention with segment-mean landmarks and iterative pinv",
        test_params={"landmarks": 8},
    )
)
