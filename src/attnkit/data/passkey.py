"""Passkey retrieval prompts, and a training stream with passkey episodes mixed into the text.

Mohtashami & Jaggi, "Landmark Attention" (2023) popularised the test: a random
5-digit key is stated once inside filler text, and at the end of the prompt
the model is asked for it (``CUE``); the answer is the 5 digits that follow.
A model trained only on prose does not answer (it never saw the format), so
:func:`mixed` interleaves whole episodes, answer included, with the training
text (``attnkit train lm --passkey SHARE``).
"""
from __future__ import annotations

import torch

STATEMENT = " The pass key is {key}. Remember it. {key} is the pass key. "
CUE = " The pass key is"


def episode(codec, filler: torch.Tensor, length: int, key: str, depth: float, answer: bool) -> torch.Tensor:
    """``length`` tokens: filler with the statement at ``depth`` (a fraction) of it, then the cue (and the answer)."""
    statement, cue = codec.encode(STATEMENT.format(key=key)), codec.encode(CUE + (f" {key}." if answer else ""))
    room = length - statement.numel() - cue.numel()
    if room < 1 or filler.numel() < room:
        raise ValueError(f"a passkey episode of {length} tokens has no room for filler (needs more than "
                         f"{statement.numel() + cue.numel()} tokens)")
    at = round(room * depth)
    return torch.cat([filler[:at], statement, filler[at:room], cue])


def random_key(g: torch.Generator) -> str:
    return "".join(str(int(d)) for d in torch.randint(0, 10, (5,), generator=g))


def prompts(codec, filler: torch.Tensor, context: int, trials: int, seed: int = 0):
    """``(ids (trials, context), keys)``: the key at depths spread evenly over the trials, filler from random places."""
    g = torch.Generator().manual_seed(seed)
    rows, keys = [], []
    for t in range(trials):
        key = random_key(g)
        start = int(torch.randint(0, filler.numel() - context, (1,), generator=g))
        rows.append(episode(codec, filler[start : start + context], context, key, (t + 0.5) / trials, answer=False))
        keys.append(key)
    return torch.stack(rows), keys


def mixed(codec, ids: torch.Tensor, share: float, context: int, seed: int = 0) -> torch.Tensor:
    """The token stream ``ids`` with passkey episodes (answers included, up to ``context`` tokens long, at random
    depths) inserted so that they make up ``share`` of it."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    g = torch.Generator().manual_seed(seed)
    total = int(ids.numel() * share / (1 - share))
    gap = max(1, round(context * (1 - share) / share))  # text tokens between episodes
    shortest = min(context, codec.encode(STATEMENT.format(key="00000") + CUE + " 00000.").numel() + 16)
    parts, made, at = [], 0, 0
    while made < total and at < ids.numel():
        length = int(torch.randint(shortest, context + 1, (1,), generator=g))
        start = int(torch.randint(0, ids.numel() - length, (1,), generator=g))
        e = episode(codec, ids[start : start + length], length, random_key(g), float(torch.rand(1, generator=g)), True)
        parts += [ids[at : at + gap], e]
        made, at = made + e.numel(), at + gap
    parts.append(ids[at:])
    return torch.cat(parts)
