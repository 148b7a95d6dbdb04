"""HGRN-2 against its recurrence written out token by token (float64), with and without a lower bound."""
import pytest
import torch

import attnkit


@pytest.mark.parametrize("lower_bound", [0.0, 0.6])
def test_hgrn2_is_the_state_expanded_gated_recurrence(lower_bound):
    """f = lb + (1 - lb) sigmoid(k); S_t = diag(f_t) S_{t-1} + (1 - f_t)^T v_t; y_t = (scale q_t) S_t."""
    g = torch.Generator().manual_seed(0)
    B, H, N, D, Dv = 2, 3, 37, 8, 5
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, N, Dv, generator=g, dtype=torch.float64)
    scale = D ** -0.5
    f = lower_bound + (1 - lower_bound) * torch.sigmoid(k)
    S = torch.zeros(B, H, D, Dv, dtype=torch.float64)
    want = []
    for t in range(N):
        S = f[:, :, t, :, None] * S + (1 - f[:, :, t, :, None]) * v[:, :, t, None, :]
        want.append((scale * q[:, :, t, None, :]) @ S)
    want = torch.cat(want, dim=2)
    for form in ("reference", "chunked", "recurrent"):
        got = attnkit.attention(q, k, v, "hgrn2", causal=True, form=form, lower_bound=lower_bound, chunk_size=8)
        assert (got - want).abs().max() < 1e-10, form
    out, state = attnkit.attention(q, k, v, "hgrn2", causal=True, lower_bound=lower_bound, return_state=True)
    assert (state["S"] - S).abs().max() < 1e-10


def test_hgrn2_runs_in_a_layer_without_an_input_module():
    layer = attnkit.nn.Attention(32, 4, mechanism="hgrn2", lower_bound=0.5)
    x = torch.randn(2, 9, 32)
    assert layer(x, causal=True).shape == x.shape
