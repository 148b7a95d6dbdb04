"""Attention Buckets: the mean of softmax attentions with RoPE at different bases."""
import pytest
import torch

import attnkit
from attnkit.families.attention_buckets import bucket_weights
from attnkit.positional import RoPE


@pytest.mark.parametrize("form", ["reference", "sdpa"])
@pytest.mark.parametrize("causal", [True, False])
def test_the_output_is_the_mean_of_the_rope_branches(form, causal):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 11, 8, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 11, 8, dtype=torch.float64) for _ in range(2))
    bases = (10000.0, 300.0, 50.0)
    branches = [attnkit.attention(q, k, v, "softmax", causal=causal, position=RoPE(8, base=b)) for b in bases]
    out = attnkit.attention(q, k, v, "attention_buckets", causal=causal, bases=bases, form=form)
    torch.testing.assert_close(out, torch.stack(branches).mean(0))


def test_one_base_is_softmax_with_that_rope():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 6, dtype=torch.float64) for _ in range(3))
    out = attnkit.attention(q, k, v, "attention_buckets", causal=True, bases=(500.0,))
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=True, position=RoPE(6, base=500.0)))


def test_a_second_base_lifts_the_first_bases_deepest_trough():
    """The paper's picture: with identical content at every position, RoPE's weight oscillates with the distance;
    averaging in a base whose waveform has a peak there (here 20000 beside 10000; not every pair of bases does)
    raises the weight of the position the first base neglects most, and the deepest trough of the union."""
    D, N = 16, 64
    q = torch.ones(1, 1, 1, D, dtype=torch.float64)
    k = torch.ones(1, 1, N, D, dtype=torch.float64)
    one = bucket_weights(q, k, causal=True, mask=None, scale=1.0, bases=(10000.0,))[0, 0, 0]
    two = bucket_weights(q, k, causal=True, mask=None, scale=1.0, bases=(10000.0, 20000.0))[0, 0, 0]
    trough = int(one.argmin())
    assert two[trough] > 2 * one[trough]
    assert two.min() > 1.5 * one.min()


def test_an_odd_head_dim_is_refused_by_name():
    q = k = v = torch.randn(1, 1, 4, 5)
    with pytest.raises(ValueError, match="head_dim"):
        attnkit.attention(q, k, v, "attention_buckets", causal=True)
