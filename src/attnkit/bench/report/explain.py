"""What a model attends to in one text, as static pictures (``attnkit explain``, ``attnkit report --explain``).

    page = explain_page("The cat sat on the mat.", model="minilm", method="rollout")

A method turns the model's attention into pictures (:mod:`.views`); the attributions are
:mod:`attnkit.interpret`'s:

- ``weights``: every layer's and head's attention matrix, and the token-to-token line view;
- ``rollout`` / ``flow``: attention rollout / attention flow (Abnar & Zuidema, "Quantifying
  Attention Flow in Transformers"), a token-to-token map whose rows sum to one; a token's score
  is its column's mean over the rows (MiniLM's sentence embedding is the mean of its token
  states);
- with a second text (``pair``): the two sentences' embedding similarity explained token by
  token (:func:`attnkit.interpret.explain_similarity`; ``contribution``, ``rollout``, ``flow`` or
  ``relevancy``, Chefer et al.'s gradient-weighted relevancy), each sentence's scores summing to
  the similarity; or ``lrp``, AttnLRP (:func:`attnkit.interpret.attn_lrp`) of the similarity with
  the other sentence's embedding held fixed and the embedding's norm a constant of the backward
  pass, as the rules treat normalisations (relevance absorbed by the softmax rule and kept by the
  model's biases is reported, not drawn).

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
METHODS = ("weights", "rollout", "flow")
PAIR_METHODS = ("contribution", "rollout", "flow", "relevancy", "lrp")
MAX_TOKENS = 64
MAX_FLOW_TOKENS = 32  # one max-flow per token pair on a (layers + 1) x N node graph


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"--{what}: {unknown(value, allowed, what)}")
    return value


def load(model: str = "minilm", mechanism: str = "softmax"):
    """``(encoder, tokenizer)`` with the encoder's attention running as ``mechanism`` through attnkit."""
    check_choice(model, MODELS, "model")
    from transformers.utils import logging

    from ...integrations import hf, minilm

    implementation = hf.register(mechanism)  # an unknown or unusable mechanism fails here, before loading
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # the page is the output: no "Loading weights" bar on stderr
    try:
        return minilm.load(implementation)
    finally:
        if bar:
            logging.enable_progress_bar()


def check_text(text, what: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: expected a non-empty string")
    return text


def run_model(encoder, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """``(tokens, weights)``: the text's tokens and the encoder's attention, ``(layers, heads, N, N)``,
    as :func:`attnkit.capture` records it."""
    from ... import capture

    batch = tokenizer(check_text(text), return_tensors="pt", truncation=True, max_length=MAX_TOKENS)
    with torch.no_grad(), capture(encoder) as recorded:
        encoder(**batch)
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    return tokens, recorded.stack()[:, 0]


def token_map(method: str, weights: torch.Tensor) -> torch.Tensor:
    """Rollout or flow of ``(layers, heads, N, N)`` weights: ``(N, N)``, rows summing to one."""
    from ...interpret import attention_flow, rollout

    if method == "flow" and weights.shape[-1] > MAX_FLOW_TOKENS:
        raise ValueError(f"--method flow: the text has {weights.shape[-1]} tokens; attention flow runs one max-flow "
                         f"per token pair, so it takes at most {MAX_FLOW_TOKENS} (use rollout for longer texts)")
    per_layer = [w[None] for w in weights]
    return (rollout(per_layer) if method == "rollout" else attention_flow(per_layer))[0].float()


def method_views(method: str, tokens: list[str], weights: torch.Tensor, head: int | None = None) -> str:
    """One method's pictures of ``(layers, heads, N, N)`` weights as an HTML fragment."""
    check_choice(method, METHODS, "method")
    lines = image(views.token_lines(weights, tokens, head), "token-to-token attention per layer")
    if method == "weights":
        return image(views.head_grid(weights, tokens), "attention weights per layer and head") + lines
    name = {"rollout": "attention rollout", "flow": "attention flow"}[method]
    matrix = token_map(method, weights)
    scores = matrix.mean(0)
    return "".join([
        f"<h3>{name.capitalize()} over the input tokens</h3>", views.highlighted_text(scores, tokens),
        image(views.token_scores(scores, tokens, f"{name}: each token's share of the mean-pooled sentence embedding",
                                 f"{method} share"), f"{name} over the input tokens"),
        image(views.heatmap(matrix, tokens, f"{name} (rows sum to one)"), f"{name} matrix"),
        lines,
    ])


def lrp_similarity(encoder, tokenizer, text: str, other: str) -> tuple[list[str], list[float], str]:
    """AttnLRP of ``text``'s embedding similarity with ``other``'s (held fixed): tokens, their relevance,
    and a note of what the relevance does not cover."""
    from ...integrations import minilm
    from ...interpret import attn_lrp

    fixed = minilm.embed(encoder, tokenizer, [other])[0]
    batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)

    def similarity():
        pooled = encoder(**batch).last_hidden_state[0].mean(0)
        return pooled @ fixed / pooled.norm().detach()

    r = attn_lrp(encoder, similarity, embedding=encoder.embeddings)
    note = (f"similarity {r.explained:.3f} = tokens {float(r.tokens.sum()):.3f} + absorbed by the softmax rule "
            f"{r.absorbed:.3f} + kept by biases {r.explained - float(r.tokens.sum()) - r.absorbed:.3f}")
    return tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()), r.tokens[0].tolist(), note


def pair_views(encoder, tokenizer, text: str, pair: str, method: str) -> str:
    """The similarity of two texts' embeddings explained token by token, as an HTML fragment."""
    from ...interpret import explain_similarity

    check_choice(method, PAIR_METHODS, "method")
    check_text(pair, "--pair")
    if method == "lrp":
        sentences = (lrp_similarity(encoder, tokenizer, text, pair), lrp_similarity(encoder, tokenizer, pair, text))
        head = "<h3>Similarity explained by AttnLRP</h3>"
    else:
        e = explain_similarity(encoder, tokenizer, text, pair, method=method)
        sentences = ((e.tokens_a, e.scores_a, ""), (e.tokens_b, e.scores_b, ""))
        head = (f"<h3>Similarity {e.similarity:.3f}, explained by {html.escape(method)}</h3><p class='meta'>each "
                "sentence's scores sum to the similarity</p>")
    parts = [head, "<p class='meta'>orange: the token raises the similarity, blue: it lowers it</p>"]
    for tokens, scores, note in sentences:
        if note:
            parts.append(f"<p class='meta'>{html.escape(note)}</p>")
        parts += [views.highlighted_text(scores, tokens),
                  image(views.token_scores(scores, tokens, f"{method}: each token's part of the similarity",
                                           "share of the similarity"), f"{method} scores per token")]
    return "".join(parts)


def explain_html(text: str, model: str = "minilm", methods=("rollout",), head: int | None = None,
                 mechanism: str = "softmax", pair: str | None = None) -> str:
    """The pictures of one text (or, with ``pair``, of two texts' similarity), one block per method,
    as an HTML fragment (images embedded as data URIs)."""
    methods = [methods] if isinstance(methods, str) else list(methods)
    for method in methods:
        if pair is None and method in PAIR_METHODS and method not in METHODS:
            raise ValueError(f"--method {method} explains a similarity: give the other text with --pair")
        check_choice(method, PAIR_METHODS if pair is not None else METHODS, "method")
    check_text(text)
    if pair is not None and mechanism != "softmax":
        raise ValueError("--pair explains the model as trained: leave --mechanism at softmax")
    encoder, tokenizer = load(model, mechanism)
    if pair is not None:
        return "".join(pair_views(encoder, tokenizer, text, pair, m) for m in methods)
    tokens, weights = run_model(encoder, tokenizer, text)
    if head is not None and not 0 <= head < weights.shape[1]:
        raise ValueError(f"--head: expected 0..{weights.shape[1] - 1} ({model} has {weights.shape[1]} heads), "
                         f"got {head}")
    intro = (f"<p class='meta'>{html.escape(model)} with {html.escape(mechanism)} attention: "
             f"{weights.shape[0]} layers x {weights.shape[1]} heads, {len(tokens)} tokens</p>")
    return intro + "".join(method_views(m, tokens, weights, head) for m in methods)


def explain_page(text: str, model: str = "minilm", method: str = "rollout", head: int | None = None,
                 mechanism: str = "softmax", pair: str | None = None) -> str:
    """A self-contained HTML page of :func:`explain_html` for one method, headed by the text(s)."""
    title = f"attnkit explain: {text}" + (f" / {pair}" if pair is not None else "")
    return html_page(title, explain_html(text, model, [method], head, mechanism, pair))
