"""Static pictures of attention (BertViz-style, no server): PNGs drawn by matplotlib from plain tensors.

- :func:`head_grid`: one heatmap per layer and head (query rows, key columns); :func:`heatmap`: one
  matrix (e.g. rollout) with its tokens;
- :func:`token_lines`: per layer, queries on the left joined to keys on the right by lines whose
  opacity is the weight (averaged over heads, or one head);
- :func:`token_scores`: a score per input token (rollout, relevancy, ...) as bars, and
  :func:`highlighted_text` as coloured text for an HTML page.

Weights are ``(layers, heads, N, N)`` (or a list of ``(heads, N, N)``) on any device; tokens are
the N strings the rows and columns stand for.
"""
from __future__ import annotations

import html

import torch

from .plots import WIDTH, plt, to_data_uri


def as_stack(weights) -> torch.Tensor:
    """``(layers, heads, N, N)`` float32 on the CPU, from a tensor or a list of ``(heads, N, N)`` layers."""
    if isinstance(weights, (list, tuple)):
        weights = torch.stack([torch.as_tensor(w) for w in weights])
    if not isinstance(weights, torch.Tensor) or weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights: expected (layers, heads, N, N), got {shape}")
    return weights.detach().float().cpu()


def _check_tokens(tokens: list[str], n: int) -> None:
    if len(tokens) != n:
        raise ValueError(f"tokens: expected {n} tokens (the weights' N), got {len(tokens)}")


def head_grid(weights, tokens: list[str], title: str = "attention weights per layer and head") -> str:
    """One small heatmap per (layer, head): rows are layers, columns heads; darker is more weight."""
    w = as_stack(weights)
    layers, heads, n, _ = w.shape
    _check_tokens(tokens, n)
    side = min(WIDTH / heads, 4.5)
    fig, axes = plt.subplots(layers, heads, figsize=(WIDTH, side * layers + 0.6), squeeze=False)
    label = n <= 24 and heads <= 6  # token labels only where they can be read
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            ax.imshow(w[layer, head].numpy(), cmap="Blues", vmin=0, vmax=float(w[layer, head].max()) or 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=7)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=7)
                if label and layers == 1:
                    ax.set_yticks(range(n), tokens, fontsize=5)
    if label:
        for head in range(heads):
            axes[-1, head].set_xticks(range(n), tokens, fontsize=5, rotation=90)
    fig.suptitle(f"{title} (rows: queries, columns: keys)", fontsize=10)
    return to_data_uri(fig)


def heatmap(matrix, tokens: list[str], title: str) -> str:
    """One ``(N, N)`` matrix with the tokens on both axes (rows: queries, columns: keys)."""
    m = torch.as_tensor(matrix).detach().float().cpu()
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix: expected (N, N), got {tuple(m.shape)}")
    _check_tokens(tokens, m.shape[0])
    fig, ax = plt.subplots(figsize=(WIDTH, min(6.0, 1.5 + 0.3 * len(tokens))))
    shown = ax.imshow(m.numpy(), cmap="Blues", vmin=0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    fig.colorbar(shown, ax=ax, fraction=0.03)
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def token_lines(weights, tokens: list[str], head: int | None = None,
                title: str = "token-to-token attention") -> str:
    """Per layer: tokens as queries (left) and keys (right), a line from query i to key j drawn with
    opacity proportional to its weight (the mean over heads, or ``head``)."""
    w = as_stack(weights)
    layers, heads, n, _ = w.shape
    _check_tokens(tokens, n)
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head: expected 0..{heads - 1}, got {head}")
    per_layer = w.mean(1) if head is None else w[:, head]
    cols = min(layers, 3)
    rows = -(-layers // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, max(2.5, 0.22 * n + 0.8) * rows), squeeze=False)
    for ax in axes.flat[layers:]:
        ax.set_visible(False)
    for layer, ax in zip(range(layers), axes.flat):
        a = per_layer[layer]
        top = float(a.max()) or 1.0
        for i in range(n):
            for j in range(n):
                alpha = float(a[i, j]) / top
                if alpha > 0.02:
                    ax.plot([0, 1], [n - 1 - i, n - 1 - j], color="tab:blue", alpha=alpha, lw=0.4 + 2.2 * alpha)
        for i, tok in enumerate(tokens):
            ax.text(-0.04, n - 1 - i, tok, ha="right", va="center", fontsize=7)
            ax.text(1.04, n - 1 - i, tok, ha="left", va="center", fontsize=7)
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(-0.8, n - 0.2)
        ax.axis("off")
        ax.set_title(f"layer {layer}" + (" (mean of heads)" if head is None else f", head {head}"), fontsize=8)
    fig.suptitle(f"{title}: queries left, keys right; opacity = weight", fontsize=10)
    return to_data_uri(fig)


def token_scores(scores, tokens: list[str], title: str, ylabel: str) -> str:
    """One bar per input token."""
    s = torch.as_tensor(scores).detach().float().cpu().flatten()
    _check_tokens(tokens, s.numel())
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0))
    ax.bar(range(len(tokens)), s.numpy(), color=["tab:orange" if v >= 0 else "tab:blue" for v in s.tolist()])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return to_data_uri(fig)


def highlighted_text(scores, tokens: list[str]) -> str:
    """The tokens as HTML spans, orange for positive scores and blue for negative ones, more opaque the
    larger the score's size (scaled to the largest); the score is the span's tooltip."""
    s = torch.as_tensor(scores).detach().float().cpu().flatten()
    _check_tokens(tokens, s.numel())
    top = float(s.abs().max()) or 1.0
    spans = []
    for t, v in zip(tokens, s.tolist()):
        rgb = "255,140,0" if v >= 0 else "31,119,180"
        spans.append(f'<span class="tok" style="background: rgba({rgb},{abs(v) / top:.2f})" '
                     f'title="{v:.3g}">{html.escape(t)}</span>')
    return "<p class='tokens'>" + " ".join(spans) + "</p>"
