"""Tanh soft-capping of attention logits: ``s -> cap * tanh(s / cap)``.

Used by Gemma 2 ("Gemma 2: Improving Open Language Models at a Practical
Size", 2024) and Grok-1 to keep logits bounded without a hard clip.
"""
from __future__ import annotations

import torch


def softcap_mod(cap: float):
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")

    def mod(scores, q_pos, k_pos):
        return cap * torch.tanh(scores / cap)

    return mod
