"""Twins-PCPVT: the paper's parameter counts (Table 1), any input size through the PEG, the PEG's residual form."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn import vision as V


@pytest.mark.parametrize("variant, millions", [("small", 24.1), ("base", 43.8), ("large", 60.9)])
def test_parameter_counts_are_the_papers(variant, millions):
    with torch.device("meta"):
        model = V.twins_pcpvt(variant)
    count = sum(p.numel() for p in model.parameters())
    # Table 1 gives one decimal; Large counts 60.99 M (timm's twins_pcpvt_large too): the paper truncates.
    assert 0 <= count / 1e6 - millions < 0.1


def test_a_small_pcpvt_classifies_two_input_sizes_and_learns():
    torch.manual_seed(0)
    model = V.TwinsPCPVT((8, 16, 16, 32), (1, 2, 2, 4), (2, 2, 2, 2), (1, 2, 1, 1), num_classes=3)
    for size in ((64, 64), (32, 96)):
        out = model(torch.randn(2, 3, *size))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="sr_ratio|patch"):
        model(torch.randn(1, 3, 48, 48))


def test_the_peg_is_the_map_plus_a_depthwise_conv():
    peg = V.ConditionalPositionEncoding(4)
    x = torch.randn(1, 4, 5, 5)
    expected = x + torch.nn.functional.conv2d(x, peg.proj.weight, peg.proj.bias, padding=1, groups=4)
    torch.testing.assert_close(peg(x), expected)


def test_a_stage_puts_the_peg_after_its_first_layer():
    torch.manual_seed(0)
    stage = V.PCPVTStage(3, 8, depth=2, heads=2, sr_ratio=2, mlp_ratio=2, patch=2).eval()
    x = torch.randn(1, 3, 8, 8)
    t = stage.embed_norm(stage.embed(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    expected = stage.layers[1](stage.position(stage.layers[0](t)))
    torch.testing.assert_close(stage(x), expected)
