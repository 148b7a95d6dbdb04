"""Multi-Token Attention against eq. 4 written entry by entry, and its identity settings."""
import math

import torch

import attnkit
from attnkit.families.mta import mta_weights


def test_log_weights_differ_by_the_convolved_scores_of_eq_4():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    kernel = torch.randn(2, 2, 3, dtype=torch.float64)
    w = mta_weights(q, k, v, causal=True, mask=None, scale=0.5, kernel=kernel)
    S = q @ k.transpose(-1, -2) * 0.5

    def conv(h, i, j):  # sum over i' in [0, 2), j' in [-1, 1], only pairs a causal query may see
        return sum(kernel[h, a, jp + 1] * S[0, h, i - a, j - jp] for a in range(2) for jp in (-1, 0, 1)
                   if 0 <= i - a and 0 <= j - jp <= i - a)

    for h, i in ((0, 6), (1, 4)):
        for j in range(1, i + 1):
            got = math.log(w[0, h, i, j]) - math.log(w[0, h, i, 0])
            assert abs(got - float(conv(h, i, j) - conv(h, i, 0))) < 1e-10
    assert w[0, :, 3, 4:].abs().max() == 0  # no weight on future keys


def test_identity_kernel_and_head_mixing_give_softmax_attention():
    q, k, v = (torch.randn(1, 4, 9, 8) for _ in range(3))
    kernel = torch.zeros(4, 3, 5)
    kernel[:, 0, 2] = 1.0
    head_mix = torch.eye(2).repeat(2, 1, 1)
    out = attnkit.attention(q, k, v, "mta", causal=True, kernel=kernel, head_mix=head_mix)
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=True))
