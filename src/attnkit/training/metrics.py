"""Held-out perplexity of a language model, and of the unigram baseline on the same tokens.

Evaluation windows are ``context + 1`` tokens long, evenly spaced over the
held-out ids; the model predicts tokens 1..context of each window from the
tokens before them in that window. The unigram baseline predicts the same
target tokens from training-set token frequencies (add-one smoothed), so both
numbers are perplexities of exactly the same text.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def eval_windows(ids: torch.Tensor, context: int, max_tokens: int) -> torch.Tensor:
    """``(W, context + 1)`` windows, evenly spaced over ``ids``, predicting at most ``max_tokens`` tokens."""
    if ids.numel() < context + 1:
        raise ValueError(f"held-out text has {ids.numel()} tokens; need at least context + 1 = {context + 1}")
    count = max(1, min(ids.numel() // (context + 1), max_tokens // context))
    starts = torch.linspace(0, ids.numel() - context - 1, count).long()
    return torch.stack([ids[s : s + context + 1] for s in starts.tolist()])


@torch.no_grad()
def model_perplexity(model, windows: torch.Tensor, batch: int = 16) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i : i + batch].to(next(model.parameters()).device)
        logits = model(w[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


def unigram_perplexity(train_ids: torch.Tensor, windows: torch.Tensor, vocab_size: int) -> float:
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    targets = windows[:, 1:].flatten()
    return math.exp(-logp[targets].mean().item())


@torch.no_grad()
def attention_entropy_per_layer(model, windows: torch.Tensor) -> list[float | None]:
    """Mean attention entropy (nats, over heads, queries and windows) of each attention call of one
    forward pass over ``windows[:, :-1]``, in layer order; None for a call whose mechanism records no
    weights. The measurement of "Stabilizing Transformer Training by Preventing Attention Entropy
    Collapse" (:func:`attnkit.nn.attention_entropy`)."""
    from ..capture import capture
    from ..nn import attention_entropy

    was_training = model.training
    model.eval()
    with capture(model) as records:
        model(windows[:, :-1].to(next(model.parameters()).device))
    model.train(was_training)
    return [None if r.weights is None else round(attention_entropy(r.weights.float()).mean().item(), 4)
            for r in records]
