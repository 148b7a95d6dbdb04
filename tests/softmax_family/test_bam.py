"""BAM: the generalised Gaussian prior per pair, and its ALiBi special case."""
import math

import torch

import attnkit


def test_bam_adds_the_generalised_gaussian_log_prior():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64) for _ in range(3))
    alpha, beta, mu = (torch.tensor(x, dtype=torch.float64) for x in ([3.0, 5.0], [0.7, 2.0], [-1.0, 0.5]))
    out = attnkit.attention(q, k, v, "bam", causal=True, alpha=alpha, beta=beta, mu=mu)
    for h in range(2):
        for i in range(6):
            logits = [float(q[0, h, i] @ k[0, h, j]) / 2 - (abs(j - i - float(mu[h])) + 1e-5) ** float(beta[h])
                      / float(alpha[h]) ** float(beta[h]) for j in range(i + 1)]
            m = max(logits)
            w = [math.exp(x - m) for x in logits]
            expect = sum(w[j] / sum(w) * v[0, h, j] for j in range(i + 1))
            torch.testing.assert_close(out[0, h, i], expect)


def test_bam_with_beta_one_and_mu_zero_is_alibi():
    q, k, v = (torch.randn(1, 8, 12, 16, dtype=torch.float64) for _ in range(3))
    slopes = torch.tensor([2 ** (-(h + 1)) for h in range(8)], dtype=torch.float64)
    out = attnkit.attention(q, k, v, "bam", causal=True, alpha=1 / slopes, beta=torch.ones(8, dtype=torch.float64),
                            mu=torch.zeros(8, dtype=torch.float64))
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "alibi", causal=True), rtol=1e-4, atol=1e-4)
