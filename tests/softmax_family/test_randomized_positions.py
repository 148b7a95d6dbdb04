"""Randomized positional encodings: a sorted random subset of a longer range, read by a RoPE."""
import pytest
import torch

import attnkit
from attnkit.positional import RandomizedPositions, RoPE


def test_positions_are_sorted_distinct_and_reach_past_the_sequence_length():
    enc = RandomizedPositions(RoPE(8), 256, torch.Generator().manual_seed(0))
    draws = [enc.draw(16, "cpu") for _ in range(20)]
    for p in draws:
        assert (p[1:] > p[:-1]).all() and 0 <= p.min() and p.max() < 256
    assert max(int(p.max()) for p in draws) > 200  # a 16-token sequence is trained on far positions


def test_the_attention_is_rope_at_the_drawn_positions():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 8, dtype=torch.float64) for _ in range(3))
    rope = RoPE(8)
    out = attnkit.attention(q, k, v, causal=True, position=RandomizedPositions(rope, 64, torch.Generator().manual_seed(3)))
    p = RandomizedPositions(rope, 64, torch.Generator().manual_seed(3)).draw(10, "cpu")
    expected = attnkit.attention(rope.rotate(q, p), rope.rotate(k, p), v, causal=True)
    torch.testing.assert_close(out, expected)


def test_with_no_room_to_draw_it_is_plain_rope_and_longer_sequences_are_refused():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 1, 6, 4, dtype=torch.float64) for _ in range(3))
    same = attnkit.attention(q, k, v, causal=True, position=RandomizedPositions(RoPE(4), 6))
    torch.testing.assert_close(same, attnkit.attention(q, k, v, causal=True, position=RoPE(4)))
    with pytest.raises(ValueError, match="max_length >= 6"):
        attnkit.attention(q, k, v, causal=True, position=RandomizedPositions(RoPE(4), 5))
