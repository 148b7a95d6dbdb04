"""Decode-step flatness: one step after contexts of growing length, timed in turns.

A recurrent mechanism's decode step should cost the same after 1k or 64k tokens
(its state is constant in size). Every context is prefilled first, then the steps
after all of them are timed in turns (``interleaved_medians``), so a drift in the
machine's speed touches each context alike.
"""
from __future__ import annotations

from ..registry import kv_cache_size
from ._timing import interleaved_medians


def decode_flatness(run, make_qkv, contexts: list[int], steps: int) -> float:
    """Print each context's step time and state size beside softmax's KV cache; return slowest / fastest.

    ``run(form, q, k, v, initial_state=None) -> (out, state)`` is a stateful form by name;
    ``make_qkv(n)`` gives ``q, k, v`` of ``n`` tokens.
    """
    steps_after, sizes = [], []
    for n in contexts:
        q, k, v = make_qkv(n + 1)
        _, state = run("chunked", q[:, :, :n], k[:, :, :n], v[:, :, :n])
        token = tuple(t[:, :, n:].clone() for t in (q, k, v))  # the prefill's inputs can go
        steps_after.append(lambda token=token, state=state: run("recurrent", *token, initial_state=state))
        B, H, _, D = q.shape
        sizes.append((state.numel(), kv_cache_size(B, H, H, n, D)))
    times = interleaved_medians(steps_after, steps)
    for n, t, (numbers, cache) in zip(contexts, times, sizes):
        print(f"  context {n:>6}: {t * 1e6:8.1f} us/token, state {numbers:,} numbers (softmax KV cache: {cache:,})")
    ratio = max(times) / min(times)
    print(f"  slowest / fastest step: {ratio:.2f} (target <= 1.25)")
    return ratio
