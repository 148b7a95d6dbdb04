"""RWKV-6 and RWKV-7 against their papers' equations, written per head in the papers' notation."""
import torch
import torch.nn.functional as F

import attnkit


def test_rwkv6_is_finch_wkv_with_the_bonus_on_the_current_token():
    torch.manual_seed(0)
    B, H, N, D = 1, 2, 9, 3
    r, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    w = torch.exp(-torch.exp(torch.randn(B, H, N, D, dtype=torch.float64)))  # w_t = exp(-exp(d_t))
    u = torch.randn(H, D, dtype=torch.float64)
    out = attnkit.attention(r, k, v, "rwkv6", causal=True, log_w=w.log(), u=u)
    for h in range(H):
        for t in range(N):  # wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(w_{i+1} ... w_{t-1}) k_i^T v_i
            wkv = torch.diag(u[h]) @ torch.outer(k[0, h, t], v[0, h, t])
            for i in range(t):
                decay = torch.prod(w[0, h, i + 1 : t], dim=0) if t > i + 1 else torch.ones(D, dtype=torch.float64)
                wkv = wkv + torch.diag(decay) @ torch.outer(k[0, h, i], v[0, h, i])
            torch.testing.assert_close(out[0, h, t], r[0, h, t] @ wkv)


def test_rwkv7_is_goose_wkv_in_row_vector_form():
    torch.manual_seed(1)
    B, H, N, D = 1, 2, 9, 4
    r, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    w = torch.exp(-0.606531 * torch.sigmoid(torch.randn(B, H, N, D, dtype=torch.float64)))
    kappa = F.normalize(torch.randn(B, H, N, D, dtype=torch.float64), dim=-1)
    rate = torch.sigmoid(torch.randn(B, H, N, D, dtype=torch.float64))
    out = attnkit.attention(r, k, v, "rwkv7", causal=True, log_w=w.log(), a=-kappa, b=kappa * rate)
    for h in range(H):
        wkv = torch.zeros(D, D, dtype=torch.float64)  # (Dv, Dk)
        for t in range(N):
            kh, a = kappa[0, h, t], rate[0, h, t]
            wkv = wkv @ (torch.diag(w[0, h, t]) - torch.outer(kh, a * kh)) + torch.outer(v[0, h, t], k[0, h, t])
            torch.testing.assert_close(out[0, h, t], wkv @ r[0, h, t])


def test_chunked_forms_hold_strong_decays_in_float32():
    """Per-channel decays down to e^-20 per token (RWKV-6) and RWKV-7's bound, 64-token chunks, float32."""
    torch.manual_seed(2)
    B, H, N, D = 1, 2, 150, 16
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64) for _ in range(3))
    inputs = {
        "rwkv6": {"log_w": -torch.exp(3 * torch.randn(B, H, N, D, dtype=torch.float64)).clamp(max=20),
                  "u": torch.randn(H, D, dtype=torch.float64)},
        "rwkv7": {"log_w": torch.full((B, H, N, D), -0.606531, dtype=torch.float64),
                  "a": -F.normalize(torch.randn(B, H, N, D, dtype=torch.float64), dim=-1)},
    }
    inputs["rwkv7"]["b"] = -inputs["rwkv7"]["a"] * 0.9
    for name, extra in inputs.items():
        ref = attnkit.attention(q, k, v, name, causal=True, form="reference", **extra)
        f32 = {n: t.float() for n, t in extra.items()}
        out = attnkit.attention(q.float(), k.float(), v.float(), name, causal=True, form="chunked", chunk_size=64, **f32)
        ref32 = attnkit.attention(q.float(), k.float(), v.float(), name, causal=True, form="reference", **f32)
        assert (out.double() - ref).abs().max() <= 10 * (ref32.double() - ref).abs().max() + 1e-5, name
