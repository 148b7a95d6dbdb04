"""Sigmoid attention with the ``-log n`` bias.

Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid
Self-Attention" (2024): the row softmax is replaced by an elementwise sigmoid,
``out_i = sum_j sigmoid(q_i . k_j * scale + b) v_j``, with ``b = -log n`` so that
the output norm at initialisation matches softmax attention. Rows are not
normalised, so a query may attend to nothing.

``n`` is the sequence length the bias is computed for. Left as ``None`` it is
the number of keys of the call; incremental use needs it fixed (the number of
keys grows with every call, and the bias must not), so ``n=None`` is refused
there.
"""
from __future__ import annotations

import math

import torch

from ..params import Param
from ..scores.normalisers import Normaliser
from ..validation import check_int
from ..builders.score_pipeline import register_score_mechanism

SIGMOID = Normaliser("sigmoid", "sum", phi=torch.sigmoid)


def sigmoid_bias_mod(q, k, *, n, **_):
    check_int("n", n, optional=True)
    bias = -math.log(n if n is not None else k.shape[2])
    return lambda scores, q_pos, k_pos: scores + bias


def _needs_fixed_n(step):
    def checked(q, k, v, state, *, n, **kw):
        if n is None:
            raise ValueError(
                "sigmoid: incremental use needs a fixed n (the length the -log n bias is computed for), "
                "e.g. n=4096; with n=None the bias would change as the cache grows"
            )
        return step(q, k, v, state, n=n, **kw)

    return checked


register_score_mechanism(
    "sigmoid",
    papers=("Theory, Analysis, and Best Practices for Sigmoid Self-Attention",),
    make_mod=sigmoid_bias_mod,
    normaliser=SIGMOID,
    params={"n": Param(None, int, 'length n of the -log n bias; None: the key length (one-shot only)', low=1, optional=True)},
    wrap_step=_needs_fixed_n,
    summary="elementwise sigmoid(s - log n) weights, no row normalisation",
    test_params={"n": 64},
)
