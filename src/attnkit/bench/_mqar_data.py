"""Multi-query associative recall (MQAR) data, as the Zoology paper describes it.

"Zoology: Measuring and Improving Recall in Efficient Language Models" (Arora et
al., 2023). Each example is a sequence of ``seq_len`` tokens over a vocabulary
of ``vocab`` tokens:

- a context of ``num_kv`` key-value pairs ``k1 v1 k2 v2 ...``; keys come from the
  lower half of the vocabulary (token 0, the blank, excluded), values from the
  upper half, all keys of an example distinct and all values distinct;
- after the context every key appears once more, at position ``2K + 2(g - 1)``,
  where the ``K`` distinct gaps ``g`` are drawn from ``1 .. (L - 2K) / 2`` with
  probability proportional to ``g ** (alpha - 1)`` (short gaps favoured);
- the model reads left to right; the only supervised positions are the repeated
  keys, whose target is the value paired with that key (every other target is
  ``IGNORE``). Remaining blanks may be filled with random tokens
  (Zoology's ``random_non_queries``).
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE = -100


def check_mqar_sizes(seq_len: int, num_kv: int, vocab: int) -> None:
    """Raise ValueError naming the argument when (L, K, V) cannot form MQAR examples."""
    if seq_len % 2:
        raise ValueError(f"seq_len must be even, got {seq_len}")
    if num_kv < 1:
        raise ValueError(f"num_kv must be >= 1, got {num_kv}")
    if 4 * num_kv > seq_len:
        raise ValueError(f"seq_len must be >= 4 * num_kv (context plus one query per key), got seq_len={seq_len}, "
                         f"num_kv={num_kv}")
    if vocab % 2 or vocab // 2 - 1 < num_kv:
        raise ValueError(f"vocab must be even with vocab/2 - 1 >= num_kv distinct keys, got vocab={vocab}, "
                         f"num_kv={num_kv}")


def gap_probabilities(seq_len: int, num_kv: int, alpha: float) -> np.ndarray:
    """P(g) for g = 1 .. (L - 2K) / 2, proportional to g ** (alpha - 1)."""
    gaps = np.arange(1, (seq_len - 2 * num_kv) // 2 + 1, dtype=np.float64)
    p = gaps ** (alpha - 1.0)
    return p / p.sum()


def mqar(
    num_examples: int,
    seq_len: int,
    num_kv: int,
    vocab: int,
    *,
    alpha: float = 0.01,
    seed: int,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64; ``targets`` is IGNORE off the queries."""
    check_mqar_sizes(seq_len, num_kv, vocab)
    rng = np.random.default_rng(seed)
    half = vocab // 2
    keys = np.stack([rng.choice(np.arange(1, half), size=num_kv, replace=False) for _ in range(num_examples)])
    values = np.stack([rng.choice(np.arange(half, vocab), size=num_kv, replace=False) for _ in range(num_examples)])
    context = 2 * num_kv
    inputs = np.zeros((num_examples, seq_len), dtype=np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    targets = np.full((num_examples, seq_len), IGNORE, dtype=np.int64)
    p = gap_probabilities(seq_len, num_kv, alpha)
    rows = np.arange(num_examples)[:, None]
    gaps = np.stack([rng.choice(len(p), size=num_kv, replace=False, p=p) for _ in range(num_examples)])
    positions = context + 2 * gaps  # gap g = index + 1 sits at context + 2 (g - 1)
    inputs[rows, positions] = keys
    targets[rows, positions] = values
    if random_non_queries:
        blank = inputs == 0
        inputs[blank] = rng.integers(0, vocab, size=int(blank.sum()))
    return torch.from_numpy(inputs), torch.from_numpy(targets)
