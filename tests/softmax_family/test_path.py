"""PaTH attention against its score written with the Householder matrices multiplied out."""
import torch
import torch.nn.functional as F

import attnkit


def _inputs(seed, B=1, H=2, N=11, D=5):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    w = F.normalize(torch.randn(B, H, N, D, dtype=torch.float64), dim=-1)
    beta = 2 * torch.rand(B, H, N, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(B, H, N, dtype=torch.float64))
    return q, k, v, w, beta, g


def test_scores_are_q_times_the_householder_products_times_k():
    q, k, v, w, beta, g = _inputs(0)
    N, D = q.shape[2], q.shape[3]
    out = attnkit.attention(q, k, v, "path", causal=True, scale=0.3, w=w, beta=beta, g=g, form="chunked", chunk_size=4)
    for h in range(q.shape[1]):
        Hs = [torch.eye(D, dtype=torch.float64) - beta[0, h, t] * torch.outer(w[0, h, t], w[0, h, t]) for t in range(N)]
        for i in range(N):
            scores = torch.full((N,), float("-inf"), dtype=torch.float64)
            for j in range(i + 1):
                product = torch.eye(D, dtype=torch.float64)
                for s in range(j + 1, i + 1):
                    product = Hs[s] @ product  # H_i ... H_{j+1}: H_{j+1} acts on k_j first
                scores[j] = 0.3 * q[0, h, i] @ product @ k[0, h, j] + g[0, h, j + 1 : i + 1].sum()
            torch.testing.assert_close(out[0, h, i], scores.softmax(0) @ v[0, h])


def test_without_transforms_path_is_causal_softmax():
    q, k, v, w, beta, _ = _inputs(1)
    out = attnkit.attention(q, k, v, "path", causal=True, w=w, beta=torch.zeros_like(beta))
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "softmax", causal=True))


def test_reflections_preserve_the_norm_so_scores_stay_bounded():
    """beta = 2 makes each H_t an orthogonal reflection: |s_ij| <= scale |q_i| |k_j| over any distance."""
    q, k, v, w, beta, _ = _inputs(2, N=40)
    from attnkit.families.path import path_scores

    s = path_scores(q, k, w, torch.full_like(beta, 2.0), None, scale=1.0)
    bound = q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :]
    seen = torch.ones(40, 40, dtype=torch.bool).tril()
    assert (s.abs()[..., seen] <= bound[..., seen] + 1e-9).all()
