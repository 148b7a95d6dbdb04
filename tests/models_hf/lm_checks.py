"""Checks shared by the model tests."""
from __future__ import annotations

import torch


def assert_generate_equals_recompute(lm, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy ``generate`` through the layers' states gives the tokens that recomputing the whole
    sequence at every step gives. Returns them."""
    out = lm.generate(prompt, new_tokens)
    x = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            x = torch.cat([x, lm(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, x)
    return out
