"""LeViT's attention bias: per head, a function of the 2-D patch offset |dx|, |dy| only."""
import pytest
import torch

import attnkit
from attnkit.families.levit_bias import levit_bias


def test_matches_the_papers_equation_patch_by_patch():
    torch.manual_seed(0)
    width, rows = 4, 3
    N = width * rows
    q, k, v = (torch.randn(1, 2, N, 5, dtype=torch.float64) for _ in range(3))
    table = torch.randn(2, rows, width, dtype=torch.float64)
    expected = torch.empty_like(q)
    for h in range(2):
        scores = q[0, h] @ k[0, h].T / 5 ** 0.5
        for i in range(N):
            for j in range(N):
                (yi, xi), (yj, xj) = divmod(i, width), divmod(j, width)
                scores[i, j] += table[h, abs(yi - yj), abs(xi - xj)]
        expected[0, h] = torch.softmax(scores, -1) @ v[0, h]
    for form in ("reference", "chunked"):
        out = attnkit.attention(q, k, v, "levit_bias", causal=False, table=table, width=width, form=form)
        torch.testing.assert_close(out, expected)


def test_the_bias_is_translation_invariant_and_symmetric():
    torch.manual_seed(1)
    width = 5
    table = torch.randn(3, 4, width, dtype=torch.float64)
    pos = torch.arange(20)
    bias = levit_bias(table, pos, pos, width)
    torch.testing.assert_close(bias, bias.transpose(-1, -2))
    # the patch pairs ((y, x), (y', x')) and ((y + 1, x + 1), (y' + 1, x' + 1)) on a 4 x 5 grid
    inner = torch.tensor([y * width + x for y in range(3) for x in range(4)])
    torch.testing.assert_close(bias[:, inner][:, :, inner], bias[:, inner + width + 1][:, :, inner + width + 1])


def test_a_sequence_longer_than_the_table_is_refused():
    q = torch.randn(1, 1, 17, 4)
    table = torch.randn(1, 2, 8)
    with pytest.raises(ValueError, match="table has 2 rows"):
        attnkit.attention(q, q, q, "levit_bias", causal=False, table=table, width=8)
