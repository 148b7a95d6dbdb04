"""Passkey retrieval through a compressed cache (``attnkit bench kv``).

Prompts from :mod:`attnkit.data.passkey`: a 5-digit key stated once in
held-out Shakespeare at a depth spread evenly over the trials, ending with
the cue, so long that the answer ends at ``context`` tokens (the longest
context the model was trained on). The prompt is prefilled and compressed by the policy, the model then
decodes greedily through the compressed cache; a trial counts when the 5
characters after the cue (leading space stripped) are the key.
"""
from __future__ import annotations

import torch

from ..data import passkey


@torch.no_grad()
def accuracy(model, codec, held_ids: torch.Tensor, context: int, trials: int, policy, compress) -> float:
    ids, keys = passkey.prompts(codec, held_ids, passkey.prompt_length(codec, context), trials)
    last, recorder = model.prefill(ids % model.model.config.vocab_size)
    cache = model.start(policy, compress(recorder, policy))
    out = []
    for _ in range(6):
        token = last.argmax(-1, keepdim=True)
        out.append(token)
        last, cache = model.step(token, cache)
    if hasattr(cache, "close"):
        cache.close()
    decoded = [codec.decode(row.tolist()).strip()[:5] for row in torch.cat(out, 1)]
    return sum(d == k for d, k in zip(decoded, keys)) / len(keys)
