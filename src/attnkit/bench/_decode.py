"""Decode-step flatness: one step after contexts of growing length, timed in turns.

A recurrent mechanism's decode step should cost the same after 1k or 64k tokens
(its state is constant in size). Every context is prefilled first, then the steps
after all of them are timed in turns (:func:`.timing.median_times`), so a drift in the
machine's speed touches each context alike.
"""
from __future__ import annotations

from ..registry import kv_cache_size
from .timing import median_times


def decode_flatness(run, make_qkv, contexts: list[int], steps: int) -> dict:
    """Print each context's step time and state size beside softmax's KV cache; return these figures
    and ``slowest_over_fastest``.

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
    times = median_times(steps_after, steps)
    for n, t, (numbers, cache) in zip(contexts, times, sizes):
        print(f"  context {n:>6}: {t * 1e6:8.1f} us/token, state {numbers:,} numbers (softmax KV cache: {cache:,})")
    ratio = max(times) / min(times)
    print(f"  slowest / fastest step: {ratio:.2f} (target <= 1.25)")
    return {"contexts": contexts, "us_per_token": [t * 1e6 for t in times], "state_numbers": [a for a, _ in sizes],
            "kv_cache_numbers": [b for _, b in sizes], "slowest_over_fastest": ratio}
