"""Per-head temperatures: each head is softmax attention with its scale multiplied by its temperature."""
import torch

import attnkit


def test_each_head_is_softmax_with_its_own_scale():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64) for _ in range(3))
    temperature = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    out = attnkit.attention(q, k, v, "head_temperature", causal=True, temperature=temperature)
    for h in range(3):
        expected = attnkit.attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], causal=True,
                                     scale=float(temperature[h]) / 8 ** 0.5)
        torch.testing.assert_close(out[:, h:h + 1], expected)
