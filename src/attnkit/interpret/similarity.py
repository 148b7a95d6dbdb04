"""A sentence-pair similarity of a Hugging Face sentence encoder (MiniLM) explained token by token.

The encoder's sentence embedding is the mean of its last hidden states ``h_i`` over the
``n`` tokens, L2-normalised, and the similarity is the dot product of two embeddings. So the
similarity splits exactly over the positions of the first sentence::

    sim = e_a . e_b = sum_i c_i,    c_i = (h_i . e_b) / (n ||mean h||)

(``method="contribution"``). The other methods carry these contributions back to the input
tokens through a token-to-token map whose rows sum to one, ``scores = c @ map`` (so the
scores still sum to the similarity): ``"rollout"``, ``"flow"``, or ``"relevancy"``, Chefer
et al.'s gradient-weighted relevancy of the similarity with its rows normalised. Each
sentence is explained with the other one's embedding held fixed.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..capture import capture
from .flow import attention_flow
from .relevancy import self_relevancy
from .rollout import rollout

METHODS = ("contribution", "rollout", "flow", "relevancy")


@dataclass
class SimilarityExplanation:
    """Per-token scores of each sentence (each list sums to ``similarity``)."""

    method: str
    similarity: float
    tokens_a: list[str]
    scores_a: list[float]
    tokens_b: list[str]
    scores_b: list[float]


def explain_similarity(model, tokenizer, first: str, second: str, *, method: str = "relevancy") -> SimilarityExplanation:
    """Explain the cosine similarity of two sentences' embeddings token by token (see the module docstring).

    ``model``/``tokenizer``: a transformers encoder and its tokenizer, e.g.
    ``attnkit.integrations.minilm.load()``; its attention runs on attnkit's softmax during the
    call (so the weights are recorded) and is restored afterwards.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, text in (("first", first), ("second", second)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    with _on_attnkit_softmax(model):
        emb_a, emb_b = _embedding(model, tokenizer, first), _embedding(model, tokenizer, second)
        tokens_a, scores_a = _explain(model, tokenizer, first, emb_b, method)
        tokens_b, scores_b = _explain(model, tokenizer, second, emb_a, method)
    return SimilarityExplanation(method, float(emb_a @ emb_b), tokens_a, scores_a, tokens_b, scores_b)


@contextmanager
def _on_attnkit_softmax(model):
    from ..integrations import hf

    previous = model.config._attn_implementation
    hf.use(model, "softmax")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _encode(model, tokenizer, text):
    batch = tokenizer([text], return_tensors="pt").to(model.device)
    return batch, tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())


@torch.no_grad()
def _embedding(model, tokenizer, text) -> torch.Tensor:
    batch, _ = _encode(model, tokenizer, text)
    return torch.nn.functional.normalize(model(**batch).last_hidden_state[0].mean(0), dim=-1)


def _explain(model, tokenizer, text, other, method):
    batch, tokens = _encode(model, tokenizer, text)
    with torch.enable_grad(), capture(model, grad=method == "relevancy") as rec:
        hidden = model(**batch).last_hidden_state[0]
    pooled = hidden.mean(0)
    contributions = (hidden @ other) / (hidden.shape[0] * pooled.norm())
    similarity = contributions.sum()
    if method == "contribution":
        scores = contributions
    elif method in ("rollout", "flow"):
        weights = [w.detach() for w in rec.weights()]
        carry = rollout(weights) if method == "rollout" else attention_flow(weights)
        scores = contributions.detach() @ carry[0].to(contributions.dtype)
    else:
        weights = rec.weights()
        grads = torch.autograd.grad(similarity, weights)
        r = self_relevancy(weights, list(grads))[0]
        scores = contributions.detach() @ (r / r.sum(dim=-1, keepdim=True))
    return tokens, [float(s) for s in scores.detach()]
