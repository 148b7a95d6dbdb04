"""Bayesian Attention Mechanism (BAM), from Bianchessi, Barros & Kupssinskü, "Bayesian Attention
Mechanism: A Probabilistic Framework for Positional Encoding and Context Length Extrapolation" (2025).

Attention is read as a posterior: the softmax of the content scores plus a log *prior* over the
key's position given the query's. NoPE is the uniform prior and ALiBi a Laplace one; the paper's
generalised Gaussian prior gives, per head ``h`` and offset ``d = j - i`` (key minus query),

    log p_h(j | i) = -(|d - mu_h| / alpha_h)^beta_h,      w_ij = softmax_j(q_i k_j * scale + log p_h(j | i))

with learned scale ``alpha_h > 0``, shape ``beta_h > 0`` and location ``mu_h`` (tensor inputs,
each ``(heads,)``). ``beta = 1, mu = 0, alpha = 1 / m_h`` is ALiBi with slope ``m_h``; a large
``alpha`` approaches NoPE. As in the authors' code, ``|d - mu| + 1e-5`` is raised to ``beta`` so
the gradient stays finite at ``d = mu`` when ``beta < 1``.
"""
from __future__ import annotations

import torch

from ..builders.score_pipeline import register_score_mechanism
from ..params import TensorInput
from ..validation import check_tensor

PAPER = ("Bayesian Attention Mechanism: A Probabilistic Framework for Positional Encoding and "
         "Context Length Extrapolation")
EPS = 1e-5


def log_prior(q_pos, k_pos, alpha, beta, mu):
    """``-(|k - q - mu| + eps)^beta / alpha^beta`` per head: ``(heads, Nq, Nk)``."""
    d = (k_pos[None, :] - q_pos[:, None]).to(alpha.dtype)
    return -((d[None] - mu[:, None, None]).abs() + EPS) ** beta[:, None, None] / alpha[:, None, None] ** beta[:, None, None]


def _mod(q, k, *, alpha, beta, mu, **_):
    H = q.shape[1]
    for name, t in (("alpha", alpha), ("beta", beta), ("mu", mu)):
        check_tensor(name, t, (H,), q, what="(heads,)")
    return lambda scores, q_pos, k_pos: scores + log_prior(q_pos, k_pos, alpha, beta, mu)


def _inputs(q, k, v, g):
    H = q.shape[1]
    f64 = torch.float64
    return {"alpha": (2.0 + 8 * torch.rand(H, generator=g, dtype=f64)).to(q.dtype),
            "beta": (0.5 + 1.5 * torch.rand(H, generator=g, dtype=f64)).to(q.dtype),
            "mu": torch.randn(H, generator=g, dtype=f64).to(q.dtype)}


register_score_mechanism(
    "bam",
    papers=(PAPER,),
    make_mod=_mod,
    inputs={"alpha": TensorInput("(H,)", "prior scales > 0"), "beta": TensorInput("(H,)", "prior shapes > 0"),
            "mu": TensorInput("(H,)", "prior locations (offsets)")},
    tensor_inputs=_inputs,
    summary="softmax + generalised-Gaussian log prior -(|j - i - mu| / alpha)^beta per head",
)
