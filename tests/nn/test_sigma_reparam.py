"""σReparam: the power-iteration estimate of the spectral norm, the re-parametrised output, attention entropy."""
import math

import torch
from torch import nn

from attnkit.nn import SigmaReparamLinear, attention_entropy, sigma_reparam


def test_sigma_converges_to_the_spectral_norm_and_scales_the_weight():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(6, 5).double()
    for _ in range(200):
        layer(torch.randn(2, 6, dtype=torch.float64))  # training mode: one power step per call
    true = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert abs(layer.sigma().item() - true.item()) < 1e-8
    layer.eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    expect = x @ (layer.gamma * layer.weight / true).T + layer.bias
    torch.testing.assert_close(layer(x), expect)


def test_sigma_reparam_replaces_linears_and_can_keep_a_models_outputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3))).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = model(x)
    sigma_reparam(model, keep_outputs=True).eval()
    assert isinstance(model[0], SigmaReparamLinear) and isinstance(model[2][0], SigmaReparamLinear)
    torch.testing.assert_close(model(x), before, rtol=1e-6, atol=1e-6)
    fresh = sigma_reparam(nn.Linear(4, 4))
    assert fresh.gamma.item() == 1.0


def test_attention_entropy_of_uniform_and_one_hot_rows():
    uniform = torch.full((2, 3, 4, 8), 1 / 8)
    assert torch.allclose(attention_entropy(uniform), torch.full((3,), math.log(8)))
    one_hot = torch.zeros(1, 2, 4, 8)
    one_hot[..., 0] = 1
    assert attention_entropy(one_hot).abs().max() == 0
