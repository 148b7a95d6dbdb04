"""ACT, attention calibration: Yu, Wang, Fu, Shi, Shaikh & Lin, "Unveiling and Harnessing Hidden
Attention Sinks: Enhancing Large Language Models without Training through Attention
Calibration" (ICML 2024).

Training-free, at inference. In a calibrated head, the sink tokens other than the first
(hidden sinks: keys whose mean received attention exceeds ``threshold``) keep a fraction
``beta`` of their weight; what they lose is given to the other keys in proportion to their
weights, so every row still sums to one::

    w'_is = beta w_is                                   (s a hidden sink)
    w'_ij = w_ij + (1 - beta) (sum_s w_is) w_ij / sum_(k not a sink) w_ik     (j not a sink)

(the first query, which sees only the first token, keeps its row). Which heads to calibrate
is found on held-out data, one head at a time: a head is kept when calibrating it alone
improves the metric (:func:`search_heads`). The authors' defaults: ``beta = 0.4``,
``threshold = 0.1``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..capture import capture
from .sinks import received_attention


def calibrate_weights(weights: torch.Tensor, heads, *, causal: bool, beta: float = 0.4, threshold: float = 0.1,
                      min_queries: int = 1) -> torch.Tensor:
    """``weights (B, H, N, N)`` with the hidden sinks of ``heads`` (head indices) calibrated
    (``min_queries``: keys seen by fewer queries are never sinks, see ``sinks.received_attention``)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1] (the share of weight a hidden sink keeps), got {beta!r}")
    heads = sorted(set(heads))
    if not heads:
        return weights
    if heads[0] < 0 or heads[-1] >= weights.shape[1]:
        raise ValueError(f"heads {heads} out of range for weights with {weights.shape[1]} heads")
    w = weights[:, heads]
    sinks = received_attention(w.detach(), causal=causal, min_queries=min_queries) > threshold  # (B, h, Nk)
    sinks[..., 0] = False  # the first token is the model's own sink: ACT leaves it
    sinks = sinks[..., None, :]
    on_sinks = (w * sinks).sum(dim=-1, keepdim=True)
    others = w * ~sinks
    rest = others.sum(dim=-1, keepdim=True)
    movable = rest > 0  # a row that sees nothing but sinks is left as it is
    share = others / torch.where(movable, rest, torch.ones_like(rest))
    calibrated = torch.where(sinks, beta * w, w + (1 - beta) * on_sinks * share)
    calibrated = torch.where(movable, calibrated, w)
    out = weights.clone()
    out[:, heads] = calibrated
    return out


@contextmanager
def calibrated(model: torch.nn.Module, heads: dict, *, causal: bool, beta: float = 0.4, threshold: float = 0.1,
               min_queries: int = 1):
    """Run ``model`` with ACT on ``heads``: ``{module name: [head, ...]}`` (the module names
    ``attnkit.capture(model)`` records, e.g. ``"blocks.2.mixer"``). Yields the recorder."""
    unknown = set(heads) - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"heads names modules {sorted(unknown)} that the model does not have")

    def edit(module, weights):
        chosen = heads.get(module)
        if not chosen:
            return weights
        return calibrate_weights(weights, chosen, causal=causal, beta=beta, threshold=threshold,
                                 min_queries=min_queries)

    with capture(model, edit=edit) as rec:
        yield rec


def attention_modules(model: torch.nn.Module, run) -> list[tuple[str, int]]:
    """``[(module name, heads)]`` of the attention calls ``run()`` makes, in call order."""
    with torch.no_grad(), capture(model) as rec:
        run()
    seen = {}
    for r in rec:
        if r.weights is not None:
            seen.setdefault(r.module, r.weights.shape[1])
    return list(seen.items())


def search_heads(model: torch.nn.Module, run, score, *, causal: bool, beta: float = 0.4, threshold: float = 0.1,
                 min_queries: int = 1, skip_layers: int = 0, higher_is_better: bool = True) -> tuple[dict, list[dict]]:
    """ACT's head search: calibrate one head at a time on held-out data, keep those that help.

    ``run()`` runs the model on the held-out data and ``score(output)`` measures it (e.g. minus
    the loss). ``skip_layers``: leave the first attention layers alone (the authors start at
    layer 2). Returns ``({module: [heads]}, trials)`` with one trial dict per head.
    """
    with torch.no_grad():
        base = score(run())
    chosen, trials = {}, []
    for layer, (module, count) in enumerate(attention_modules(model, run)):
        if layer < skip_layers:
            continue
        for head in range(count):
            with torch.no_grad(), calibrated(model, {module: [head]}, causal=causal, beta=beta, threshold=threshold,
                                             min_queries=min_queries):
                value = score(run())
            better = value > base if higher_is_better else value < base
            trials.append({"module": module, "head": head, "score": value, "base": base, "kept": better})
            if better:
                chosen.setdefault(module, []).append(head)
    return chosen, trials
