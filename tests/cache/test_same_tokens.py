"""Where a policy and a registered mechanism describe the same algorithm, they keep the same tokens."""
import pytest
import torch

import attnkit
from attnkit.cache import H2O, KeyNorm, SnapKV, TOVA

from .helpers import qkv, run

P = 20


def registered(name, q, k, v, **params):
    state = None
    for lo, hi in [(0, P)] + [(t, t + 1) for t in range(P, q.shape[2])]:
        _, state = attnkit.attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], name, causal=True,
                                     state=state, return_state=True, **params)
    return state


@pytest.mark.parametrize("policy, name, params", [
    (H2O(10, recent=4), "h2o", {"heavy": 6, "recent": 4, "start": P}),
    (TOVA(10), "tova", {"budget": 10, "start": P}),
    (KeyNorm(9), "knorm", {"budget": 9, "start": P}),
    (SnapKV(12, window=4, kernel=3), "snapkv", {"prompt": P, "capacity": 12, "window": 4, "kernel": 3}),
], ids=["h2o", "tova", "knorm", "snapkv"])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_keeps_what_the_registered_mechanism_keeps(policy, name, params, seed):
    q, k, v = qkv(heads=2, kv_heads=2, seed=seed)  # the mechanisms select per query head: no grouping
    out, states = run(policy, q, k, v, prompt_len=P)
    theirs = registered(name, q, k, v, **params)
    torch.testing.assert_close(states[-1].store.k, theirs.k)  # both in arrival order
    torch.testing.assert_close(states[-1].store.v, theirs.v)
    reference = attnkit.attention(q, k, v, name, causal=True, form="reference", **params)
    torch.testing.assert_close(out, reference)


def test_grouped_heads_keep_one_set_per_kv_head_voted_by_its_query_heads():
    q, k, v = qkv(heads=4, kv_heads=2)
    _, states = run(SnapKV(12, window=4, kernel=3), q, k, v, prompt_len=P)
    _, alone = run(SnapKV(12, window=4, kernel=3), q[:, :2], k[:, :1], v[:, :1], prompt_len=P)
    assert torch.equal(states[0].store.pos[:, :1], alone[0].store.pos)  # kv head 0 is voted by query heads 0, 1
