"""Properties of the MQAR generator, as BENCHMARKS.md (after Zoology) states them."""
import numpy as np
import pytest
import torch

from attnkit.bench._mqar_data import IGNORE, gap_probabilities, mqar

L, K, V = 64, 8, 64


@pytest.fixture(scope="module")
def data():
    return mqar(200, L, K, V, seed=1, random_non_queries=False)


def test_context_keys_and_values_from_their_halves_and_distinct(data):
    inputs, _ = data
    keys, values = inputs[:, 0:2 * K:2], inputs[:, 1:2 * K:2]
    assert bool(((keys >= 1) & (keys < V // 2)).all())
    assert bool(((values >= V // 2) & (values < V)).all())
    for row_k, row_v in zip(keys, values):
        assert len(set(row_k.tolist())) == K and len(set(row_v.tolist())) == K


def test_each_key_queried_once_at_even_offset_with_its_value_as_target(data):
    inputs, targets = data
    for x, y in zip(inputs, targets):
        pairs = dict(zip(x[0:2 * K:2].tolist(), x[1:2 * K:2].tolist()))
        supervised = torch.nonzero(y != IGNORE).flatten().tolist()
        assert len(supervised) == K
        assert all(p >= 2 * K and (p - 2 * K) % 2 == 0 for p in supervised)
        queried = [int(x[p]) for p in supervised]
        assert sorted(queried) == sorted(pairs)
        assert all(int(y[p]) == pairs[int(x[p])] for p in supervised)
        rest = torch.ones(L, dtype=torch.bool)
        rest[: 2 * K] = False
        rest[supervised] = False
        assert bool((x[rest] == 0).all())


def test_short_gaps_are_favoured():
    p = gap_probabilities(L, K, 0.01)
    assert len(p) == (L - 2 * K) // 2 and np.isclose(p.sum(), 1.0)
    assert np.all(np.diff(p) < 0)
    _, targets = mqar(400, L, K, V, seed=2)
    gaps = [(p - 2 * K) // 2 for y in targets for p in torch.nonzero(y != IGNORE).flatten().tolist()]
    counts = np.bincount(gaps, minlength=len(p))
    assert counts[: len(p) // 2].sum() > counts[len(p) // 2:].sum()


def test_random_non_queries_fill_blanks_but_keep_queries():
    plain_x, plain_y = mqar(50, L, K, V, seed=3, random_non_queries=False)
    filled_x, filled_y = mqar(50, L, K, V, seed=3, random_non_queries=True)
    assert torch.equal(plain_y, filled_y)
    keep = plain_x != 0
    assert torch.equal(plain_x[keep], filled_x[keep])
    assert bool((filled_x != 0).float().mean() > 0.9)


def test_seeds_are_deterministic_and_distinct():
    a = mqar(20, L, K, V, seed=5)
    b = mqar(20, L, K, V, seed=5)
    c = mqar(20, L, K, V, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("bad, name", [(dict(seq_len=63), "seq_len"), (dict(num_kv=20), "seq_len"),
                                       (dict(vocab=16), "vocab"), (dict(num_kv=0), "num_kv")])
def test_bad_sizes_name_the_argument(bad, name):
    kw = {**dict(seq_len=L, num_kv=K, vocab=V), **bad}
    with pytest.raises(ValueError, match=name):
        mqar(4, kw["seq_len"], kw["num_kv"], kw["vocab"], seed=0)
