"""Windowed patterns decode in constant memory: the cache keeps the sinks and the window, masks included."""
from __future__ import annotations

import pytest
import torch

import attnkit

PATTERNS = [("sinks_window", dict(sinks=2, window=5), 7), ("sliding_window", dict(window=4), 4),
            ("dilated_window", dict(window=3, dilation=2), 6), ("global_window", dict(globals=3, window=4), 7)]


@pytest.mark.parametrize("name,params,held", PATTERNS)
def test_incremental_with_a_mask_equals_one_shot_and_holds_only_the_window(name, params, held):
    g = torch.Generator().manual_seed(0)
    N = 30
    q, k, v = (torch.randn(1, 2, N, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(1, 1, N, N, generator=g) > 0.3
    params = {**params, "block_q": 4, "block_k": 4}
    whole = attnkit.attention(q, k, v, name, causal=True, mask=mask, **params)
    state, outs = None, []
    for a, b in zip([0, 3, 4, 11, 12, 13], [3, 4, 11, 12, 13, N]):
        out, state = attnkit.attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], name, causal=True,
                                       mask=mask[:, :, a:b, :b], state=state, return_state=True, **params)
        outs.append(out)
        assert state.length == b and state.k.shape[2] == min(b, held)
    torch.testing.assert_close(torch.cat(outs, 2), whole)
