"""ReLA: rectified linear attention.

Zhang, Titov & Sennrich, "Sparse Attention with Linear Units" (EMNLP 2021):
the softmax is replaced by a ReLU, ``z_i = sum_j relu(q_i . k_j * scale) v_j``,
so weights are exactly sparse and a head may attend to nothing. The unbounded
output is stabilised by an RMSNorm with a learned gain over the concatenated
heads of each token, ``RMSNorm(z) = g * z / sqrt(mean(z^2) + eps)`` ("rela"),
and in the gated variant ReLA-g additionally multiplied by
``sigmoid(w * z)`` with a learned vector ``w`` ("rela_gated"), as in the
authors' reference implementation.

Tensor inputs: ``gain`` and ``gate`` of shape ``(heads, v_head_dim)``, i.e. the
concatenated-heads vector of the paper viewed per head; ``gain=None`` means 1.
"""
from __future__ import annotations

import torch

from ..params import Param, TensorInput
from ..scores.normalisers import Normaliser
from ..validation import check_float, check_tensor
from ..builders.score_pipeline import register_score_mechanism

RELU = Normaliser("relu", "sum", phi=torch.relu)
PAPER = "Sparse Attention with Linear Units"


def rms_norm_heads(out, *, gain=None, gate=None, eps: float, **_):
    """RMSNorm of each token's concatenated heads, with gain and optional sigmoid gate."""
    ms = out.pow(2).mean(dim=(1, 3), keepdim=True)
    normed = out * torch.rsqrt(ms + eps)
    if gain is not None:
        normed = normed * gain[None, :, None, :]
    if gate is not None:
        normed = normed * torch.sigmoid(gate[None, :, None, :] * out)
    return normed


def _checker(gated: bool):
    def check(q, k, v, *, gain=None, gate=None, eps, **_):
        check_float("eps", eps, positive=True)
        shape = (q.shape[1], v.shape[3])
        check_tensor("gain", gain, shape, q, optional=True)
        check_tensor("gate", gate, shape, q, optional=not gated)

    return check


GAIN = TensorInput("(H, Dv)", "RMSNorm gains; 1 when absent", required=False)


def _inputs(gated: bool):
    def make(q, k, v, g):
        shape = (q.shape[1], v.shape[3])
        out = {"gain": 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=q.dtype)}
        if gated:
            out["gate"] = torch.randn(shape, generator=g, dtype=q.dtype)
        return out

    return make


register_score_mechanism(
    "rela",
    papers=(PAPER,),
    normaliser=RELU,
    params={"eps": Param(1e-08, float, 'added inside the RMSNorm', low=0, low_open=True)},
    inputs={"gain": GAIN},
    tensor_inputs=_inputs(False),
    check_inputs=_checker(False),
    postprocess=rms_norm_heads,
    postprocess_note="the output is an RMSNorm (with gain) of weights @ v over the concatenated heads",
    summary="relu(s) weights, RMSNorm (with gain) over the concatenated head outputs",
)

register_score_mechanism(
    "rela_gated",
    papers=(PAPER,),
    normaliser=RELU,
    params={"eps": Param(1e-08, float, 'added inside the RMSNorm', low=0, low_open=True)},
    tensor_inputs=_inputs(True),
    inputs={"gain": GAIN, "gate": TensorInput("(H, Dv)", "gate weights w of the output gate sigmoid(w * z)")},
    check_inputs=_checker(True),
    postprocess=rms_norm_heads,
    postprocess_note="the output is an RMSNorm of weights @ v over the concatenated heads, times a sigmoid gate",
    summary="ReLA-g: relu(s) weights, RMSNorm with gain times sigmoid(w * z)",
)
