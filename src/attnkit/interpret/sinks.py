"""Attention sinks: where the attention mass goes when it has nowhere useful to go.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (2024) found the
first token drawing a large share of every head's attention; Yu et al., "Unveiling and
Harnessing Hidden Attention Sinks" (ICML 2024) found other tokens doing the same (hidden
sinks: punctuation, delimiters); Sun et al., "Massive Activations in Large Language Models"
(2024) traced sinks to a few hidden-state dimensions of huge magnitude at those tokens.

- :func:`sink_stats`: per layer and head, the attention mass on the first token, the
  attention entropy, and the sink tokens (mean attention received above a threshold);
- :func:`massive_activations`: per layer, the (token, dimension) entries whose magnitude
  is far above the layer's median magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadSinks:
    """One head of one layer: ``first_mass`` (mean over queries of the weight on token 0),
    ``entropy`` (mean over queries, nats), ``sinks`` (positions whose mean received attention is
    above the threshold, the first token included when it is one) and their received attention."""

    layer: int
    head: int
    first_mass: float
    entropy: float
    sinks: list[int]
    received: list[float]


def received_attention(weights: torch.Tensor, *, causal: bool, min_queries: int = 1) -> torch.Tensor:
    """``(B, H, Nk)``: the mean attention each key receives from the queries that may see it
    (all queries; with ``causal``, the queries at or after it: ``N - j`` of them for key ``j``).

    With ``causal``, keys seen by fewer than ``min_queries`` queries get 0: the last keys of a window are
    read by few queries, mostly as local context, and their mean says little about sinks.
    """
    Nq, Nk = weights.shape[-2], weights.shape[-1]
    total = weights.sum(dim=-2)
    if not causal:
        return total / Nq
    seen_by = (Nk - torch.arange(Nk, device=weights.device)).clamp(max=Nq).to(weights.dtype)
    return torch.where(seen_by >= min_queries, total / seen_by, torch.zeros_like(total))


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """``(B, H)``: the mean over queries of ``-sum_j w_j log w_j`` (zero weights count 0)."""
    logs = torch.where(weights > 0, weights.log(), torch.zeros_like(weights))
    return -(weights * logs).sum(dim=-1).mean(dim=-1)


def sink_stats(weights, *, causal: bool, threshold: float = 0.1, min_queries: int = 1) -> list[HeadSinks]:
    """Per layer and head (averaged over the batch), for softmax-family weights of self-attention.

    ``weights``: per layer ``(B, H, N, N)`` (``attnkit.capture``'s ``rec.weights()``);
    ``threshold``: a key is a sink when the mean attention it receives exceeds it (ACT's
    criterion, 0.1 in the authors' code); ``min_queries``: see :func:`received_attention`.
    """
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError("weights must be a non-empty list of per-layer (B, H, N, N) attention weights")
    out = []
    for layer, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.ndim != 4:
            raise ValueError(f"weights[{layer}] must be a (B, H, Nq, Nk) tensor, got {getattr(w, 'shape', w)!r}")
        w = w.detach()
        first = w[..., 0].mean(dim=-1).mean(dim=0)
        ent = entropy(w).mean(dim=0)
        received = received_attention(w, causal=causal, min_queries=min_queries).mean(dim=0)
        for head in range(w.shape[1]):
            found = (received[head] > threshold).nonzero().flatten().tolist()
            out.append(HeadSinks(layer, head, float(first[head]), float(ent[head]), found,
                                 [round(float(received[head, j]), 4) for j in found]))
    return out


@dataclass
class MassiveActivation:
    layer: int
    token: int
    dim: int
    value: float
    ratio: float  # |value| / the layer's median magnitude


def massive_activations(hidden_states, *, ratio: float = 100.0, top: int = 5) -> list[MassiveActivation]:
    """Per layer, up to ``top`` entries of the first batch row with ``|h| > ratio * median |h|``.

    ``hidden_states``: per layer ``(B, N, D)`` residual-stream states (a Hugging Face model's
    ``output_hidden_states``, or forward hooks on attnkit's blocks). Sun et al. call an
    activation massive above ~100 in absolute value and ~1000x the median; small models have
    smaller ones, so the criterion here is the ratio alone.
    """
    found = []
    for layer, h in enumerate(hidden_states):
        mags = h[0].detach().abs()
        median = mags.median().clamp_min(torch.finfo(mags.dtype).tiny)
        values, index = mags.flatten().topk(min(top, mags.numel()))
        for value, flat in zip(values.tolist(), index.tolist()):
            if value > ratio * float(median):
                token, dim = divmod(flat, mags.shape[-1])
                found.append(MassiveActivation(layer, token, dim, float(h[0, token, dim]), value / float(median)))
    return found
