"""What a model attends to in one text, as static pictures (``attnkit explain``, ``attnkit report --explain``).

    page = explain_page("The cat sat on the mat.", model="minilm", method="rollout")

A method turns the model's attention into pictures (:mod:`.views`):

- ``weights``: every layer's and head's attention matrix, and the token-to-token line view;
- ``rollout``: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
  Transformers"): per layer the head-mean weights with the residual added, ``0.5 A + 0.5 I``,
  rows renormalised, multiplied from the first layer to the last; a token's score is its column's
  mean over the query rows (MiniLM's sentence embedding is the mean of its token states).

Models: ``minilm``, the pretrained sentence encoder of ``attnkit[hf]`` (a 6-layer BERT with 12
heads). Its attention runs through attnkit (the Hugging Face integration) with ``mechanism``
(default ``softmax``, the model as trained; any other registered mechanism that needs no learned
inputs shows what that mechanism would attend to without retraining), and
:func:`attnkit.capture` records every layer's weights.
"""
from __future__ import annotations

import html

import torch

from ..options import unknown
from . import views
from .page import html_page
from .parts import image

MODELS = ("minilm",)
METHODS = ("weights", "rollout")
MAX_TOKENS = 64


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"--{what}: {unknown(value, allowed, what)}")
    return value


def run_model(text: str, model: str = "minilm", mechanism: str = "softmax") -> tuple[list[str], torch.Tensor]:
    """``(tokens, weights)``: the text's tokens and the model's attention with ``mechanism``,
    ``(layers, heads, N, N)``, as :func:`attnkit.capture` records it."""
    check_choice(model, MODELS, "model")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: expected a non-empty string")
    from ... import capture
    from ...integrations import hf, minilm

    from transformers.utils import logging

    implementation = hf.register(mechanism)  # an unknown or unusable mechanism fails here, before loading
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # the page is the output: no "Loading weights" bar on stderr
    try:
        encoder, tokenizer = minilm.load(implementation)
    finally:
        if bar:
            logging.enable_progress_bar()
    batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)
    with torch.no_grad(), capture(encoder) as recorded:
        encoder(**batch)
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    return tokens, recorded.stack()[:, 0]


def rollout(weights: torch.Tensor) -> torch.Tensor:
    """Attention rollout of ``(layers, heads, N, N)`` weights: an ``(N, N)`` matrix whose rows sum to one."""
    eye = torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    out = eye
    for layer in weights:
        a = 0.5 * layer.mean(0) + 0.5 * eye
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


def method_views(method: str, tokens: list[str], weights: torch.Tensor, head: int | None = None) -> str:
    """One method's pictures of ``(layers, heads, N, N)`` weights as an HTML fragment."""
    check_choice(method, METHODS, "method")
    lines = image(views.token_lines(weights, tokens, head), "token-to-token attention per layer")
    if method == "weights":
        return image(views.head_grid(weights, tokens), "attention weights per layer and head") + lines
    matrix = rollout(weights)
    scores = matrix.mean(0)
    return "".join([
        "<h3>Rollout over the input tokens</h3>", views.highlighted_text(scores, tokens),
        image(views.token_scores(scores, tokens, "attention rollout: each token's share of the mean-pooled "
                                 "sentence embedding", "rollout share"), "rollout over the input tokens"),
        image(views.heatmap(matrix, tokens, "attention rollout (rows sum to one)"), "attention rollout matrix"),
        lines,
    ])


def explain_html(text: str, model: str = "minilm", methods=("rollout",), head: int | None = None,
                 mechanism: str = "softmax") -> str:
    """The pictures of one text, one block per method, as an HTML fragment (images embedded as data URIs)."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    for method in methods:
        check_choice(method, METHODS, "method")
    tokens, weights = run_model(text, model, mechanism)
    if head is not None and not 0 <= head < weights.shape[1]:
        raise ValueError(f"--head: expected 0..{weights.shape[1] - 1} ({model} has {weights.shape[1]} heads), "
                         f"got {head}")
    intro = (f"<p class='meta'>{html.escape(model)} with {html.escape(mechanism)} attention: "
             f"{weights.shape[0]} layers x {weights.shape[1]} heads, "
             f"{len(tokens)} tokens</p>")
    return intro + "".join(method_views(m, tokens, weights, head) for m in methods)


def explain_page(text: str, model: str = "minilm", method: str = "rollout", head: int | None = None,
                 mechanism: str = "softmax") -> str:
    """A self-contained HTML page of :func:`explain_html` for one method, headed by the text."""
    return html_page(f"attnkit explain: {text}", explain_html(text, model, [method], head, mechanism))
