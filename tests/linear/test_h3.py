"""H3 against its equations written as a token loop."""
import torch

import attnkit


def test_h3_is_a_decayed_state_over_shifted_keys():
    torch.manual_seed(0)
    B, H, N, D = 1, 2, 9, 3
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    shift = torch.randn(H, 4, D, dtype=torch.float64)
    log_decay = -torch.rand(H, D, dtype=torch.float64)
    out = attnkit.attention(q, k, v, "h3", causal=True, scale=0.5, shift=shift, log_decay=log_decay)
    for h in range(H):
        S = torch.zeros(D, D, dtype=torch.float64)
        for t in range(N):
            k_sh = sum(shift[h, i] * k[0, h, t - i] for i in range(4) if t - i >= 0)
            S = torch.exp(log_decay[h])[:, None] * S + k_sh[:, None] * v[0, h, t][None, :]
            torch.testing.assert_close(out[0, h, t], 0.5 * q[0, h, t] @ S)
