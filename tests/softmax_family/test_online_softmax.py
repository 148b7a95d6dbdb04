"""The shared online-softmax merge: partial states over disjoint keys, in any grouping, equal one softmax."""
import math

import pytest
import torch

from attnkit.kernels.online_softmax import Partial, fold, merge, merge_normalised, normalise, output


def _inputs(blocked_row=True):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 12, generator=g, dtype=torch.float64) * 4
    v = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
    if blocked_row:
        s[1, 2] = float("-inf")  # a row that sees no key
        s[0, 1, :8] = float("-inf")  # a row that sees only the last piece
    return s, v


def _reference(s, v):
    w = torch.softmax(s, -1).nan_to_num(0.0)
    return w @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("base2", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_fold_and_merge_in_any_grouping_equal_one_softmax(base2, in_place):
    s, v = _inputs()
    ref_out, ref_lse = _reference(s, v)
    b = 2.0 if base2 else math.e
    scores = s / math.log(b)  # the scores in base b: b^(s / ln b) = e^s
    pieces = [(0, 5), (5, 8), (8, 12)]

    def state(a, z):
        return fold(None, scores[..., a:z].clone(), v[:, a:z], base2=base2, in_place=in_place)

    swept = None
    for a, z in pieces:
        swept = fold(swept, scores[..., a:z].clone(), v[:, a:z], base2=base2, in_place=in_place)
    grouped = merge([state(0, 5), merge([state(5, 8), state(8, 12)], base2=base2, in_place=in_place)],
                    base2=base2, in_place=in_place)
    streamed = merge((state(a, z) for a, z in reversed(pieces)), base2=base2, top=scores.amax(-1, keepdim=True),
                     in_place=in_place)
    for st in (swept, grouped, streamed):
        out, lse = normalise(st, base2=base2)
        assert torch.allclose(out, ref_out, atol=1e-12)
        assert torch.allclose(lse * math.log(b), ref_lse, atol=1e-12)  # -inf where the row sees no key
        assert torch.equal(out[1, 2], torch.zeros(3, dtype=torch.float64))
        assert torch.equal(output(st), out)


def test_normalised_pairs_merge_as_their_states_do():
    s, v = _inputs()
    ref_out, ref_lse = _reference(s, v)
    halves = [_reference(s[..., a:z], v[:, a:z]) for a, z in ((0, 7), (7, 12))]
    halves = [(o.nan_to_num(0.0), lse) for o, lse in halves]
    out, lse = merge_normalised(*halves[0], *halves[1])
    assert torch.allclose(out, ref_out, atol=1e-12) and torch.equal(lse.isinf(), ref_lse.isinf())
    one = torch.ones_like(halves[0][1]).unsqueeze(-1)
    via_states = normalise(merge([Partial(o, lse.unsqueeze(-1), one) for o, lse in halves], base2=False), base2=False)
    assert torch.allclose(via_states[0], out, atol=1e-12)
