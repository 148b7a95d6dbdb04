"""A decode loop that continues from the newest state appends in place; an older state continued is copied.

Counted, not timed: every copy of held tokens goes through ``attnkit.state._grow`` (growth)
or a fresh buffer (an older state continued), so the tokens copied per step and the
storages the states live in show whether a step copies the whole cache.
"""
import pytest
import torch

import attnkit.state as state_module
from attnkit import attention


@pytest.fixture
def copied_rows(monkeypatch):
    """The number of held token rows ``_grow`` has copied so far (a one-item list)."""
    rows = [0]
    grow = state_module._grow

    def counting(buf, used, capacity, dim):
        rows[0] += used
        return grow(buf, used, capacity, dim)

    monkeypatch.setattr(state_module, "_grow", counting)
    return rows


def _decode(method, params, prompt=16, steps=48):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, prompt + steps, 8) for _ in range(3))
    _, state = attention(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], method, causal=True,
                         return_state=True, **params)
    states, storages = [state], []
    for t in range(prompt, prompt + steps):
        piece = slice(t, t + 1)
        _, state = attention(q[:, :, piece], k[:, :, piece], v[:, :, piece], method, causal=True, state=state,
                             return_state=True, **params)
        states.append(state)
        storages.append(state.k.untyped_storage().data_ptr())  # older states share the grown buffer later
    return states, storages, (q, k, v)


@pytest.mark.parametrize("method,params", [("softmax", {}), ("quest", {"page": 4, "top_k": 2})])
@torch.no_grad()
def test_continuing_the_newest_state_appends_in_amortised_constant_copies(method, params, copied_rows):
    _, storages, _ = _decode(method, params)
    # 16 prompt tokens + 48 steps: the buffer grows 16 -> 32 -> 64 and is never copied otherwise
    assert len(set(storages)) == 2
    # each growth copies the rows held then (k and v: 2 * (16 + 32); Quest's page bounds add a few):
    # O(1) per token amortised, where copying the cache at each step would copy over 3,000 rows
    assert copied_rows[0] <= 2 * 2 * (16 + 48)


@torch.no_grad()
def test_continuing_an_older_state_copies_it_and_changes_neither(copied_rows):
    states, _, _ = _decode("softmax", {}, steps=8)
    older, newest = states[3], states[-1]
    before_older, before_newest = older.k.clone(), newest.k.clone()
    other = torch.randn(1, 2, 1, 8)
    copied = copied_rows[0]
    _, branch = attention(other, other, other, "softmax", causal=True, state=older, return_state=True)
    assert copied_rows[0] - copied == 2 * older.length  # its keys and values, copied once
    _, again = attention(other, other, other, "softmax", causal=True, state=branch, return_state=True)
    assert copied_rows[0] - copied == 2 * older.length  # the branch has room: its next token is appended in place
    assert branch.k.untyped_storage().data_ptr() != newest.k.untyped_storage().data_ptr()
    torch.testing.assert_close(older.k, before_older, rtol=0, atol=0)
    torch.testing.assert_close(newest.k, before_newest, rtol=0, atol=0)
    torch.testing.assert_close(branch.k, torch.cat([before_older, other], 2), rtol=0, atol=0)
