"""Passkey retrieval prompts, and training batches with passkey episodes mixed into the text.

Mohtashami & Jaggi, "Landmark Attention" (2023) popularised the test: a random
5-digit key is stated once inside filler text, and at the end of the prompt
the model is asked for it (``CUE``); the answer is the 5 digits that follow.
A model trained only on prose does not answer (it never saw the format), and
one trained on a text stream with episodes inserted learns the format but
not the retrieval (the window rarely holds both the statement and the answer,
and the key's 5 digits are a few targets among hundreds). :func:`training_batch`
gives rows that end with a whole episode, weights the key's digits in the
loss and adds rows that teach copying (``attnkit train lm --passkey SHARE``).
"""
from __future__ import annotations

import torch

STATEMENT = " The pass key is {key}. Remember it. {key} is the pass key. "
CUE = " The pass key is"
ANSWER_WEIGHT = 3.0  # a key digit's weight in the training loss (other targets: 1)
BLOCK_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


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


def prompt_length(codec, context: int) -> int:
    """Tokens of a prompt whose answer still ends within ``context`` (the longest context a model was trained on)."""
    return context - codec.encode(" 00000").numel()


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


def training_batch(codec, ids: torch.Tensor, context: int, batch: int, share: float, g: torch.Generator):
    """``(windows (batch, context + 1), weights (batch, context))``: a training batch that teaches the task.

    A ``share`` of the rows are passkey episodes that end the window (answer included, text before them, the
    statement at a random depth), so the statement is always in view of the answer; half as many rows are
    *copy rows*, text with a random block of letters and digits written twice (the copying that retrieval
    rests on, learnt faster from dense examples); the rest are text windows. ``weights`` counts the answer's
    digits ``ANSWER_WEIGHT`` times in the loss, every other target once."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    shortest = codec.encode(STATEMENT.format(key="00000") + CUE + " 00000.").numel() + 8
    if context + 1 < shortest:
        raise ValueError(f"a passkey episode needs a context of at least {shortest - 1} tokens, got {context}")
    episodes = max(1, round(share * batch))
    copies = min(batch - episodes, round(share * batch / 2))
    starts = torch.randint(0, ids.numel() - context - 1, (batch,), generator=g).tolist()
    rows = [ids[s : s + context + 1].clone() for s in starts]
    weights = torch.ones(batch, context + 1)
    for r in range(episodes):
        length = int(torch.randint(shortest, context + 2, (1,), generator=g))
        key = random_key(g)
        rows[r][-length:] = episode(codec, rows[r][-length:], length, key, float(torch.rand(1, generator=g)), True)
        weights[r, -1 - len(key) : -1] = ANSWER_WEIGHT  # the digits before the final "."
    block = codec.encode(BLOCK_ALPHABET)
    for r in range(episodes, episodes + copies):
        n = int(torch.randint(8, max(9, context // 4), (1,), generator=g))
        text = block[torch.randint(0, block.numel(), (n,), generator=g)]
        first = int(torch.randint(0, (context + 1) // 2 - n + 1, (1,), generator=g))
        second = int(torch.randint(first + n, context + 2 - n, (1,), generator=g))
        rows[r][first : first + n] = text
        rows[r][second : second + n] = text
    return torch.stack(rows), weights[:, 1:]
