"""A pattern mechanism's spec.flops counts the pairs its mask allows, not the dense N^2."""
import pytest
import torch

import attnkit
from attnkit.builders.mask_pipeline import dense_pattern, mask_of
from attnkit.registry import dense_flops


def _counted(name, n, causal, **kw):
    q = torch.empty(1, 2, n, 1)
    allowed = dense_pattern(mask_of(attnkit.spec(name), q, q, causal=causal, **kw), 1, 2, n, n)
    return 4 * int(allowed.expand(1, 2, n, n).sum()) * 8


@pytest.mark.parametrize("causal", [True, False])
def test_window_flops_count_allowed_pairs(causal):
    s = attnkit.spec("sliding_window")
    assert s.flops(1, 2, 50, 50, 8, causal, window=7) == _counted("sliding_window", 50, causal, window=7)
    assert s.flops(1, 2, 50, 50, 8, causal, window=7) < dense_flops(1, 2, 50, 50, 8, causal)


def test_default_params_are_used():
    s = attnkit.spec("dilated_window")
    assert s.flops(1, 2, 300, 300, 8, True) == _counted("dilated_window", 300, True)


def test_documents_need_their_ids():
    s = attnkit.spec("document")
    with pytest.raises(ValueError, match="doc_ids"):
        s.flops(1, 2, 40, 40, 8, True)
    ids = torch.tensor([[0] * 10 + [1] * 30])
    assert s.flops(1, 2, 40, 40, 8, True, doc_ids=ids) == 4 * 8 * 2 * (10 * 11 // 2 + 30 * 31 // 2)


def test_content_dependent_patterns_refuse():
    with pytest.raises(ValueError, match="values of q and k"):
        attnkit.spec("hash_sparse").flops(1, 2, 40, 40, 8, True)
