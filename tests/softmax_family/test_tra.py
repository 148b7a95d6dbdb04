"""Threshold Relative Attention: keys with a non-positive score leave the softmax, and the distance to a
key counts only the kept keys between it and the query, each by its log forget gate."""
import math

import pytest
import torch

import attnkit
from attnkit.families.tra import tra_weights

from ..nn.layer_checks import assert_continues_in_pieces


def test_matches_the_papers_equations_pair_by_pair():
    torch.manual_seed(0)
    N, D = 9, 4
    q, k, v = (torch.randn(1, 1, N, D, dtype=torch.float64) for _ in range(3))
    forget = torch.randn(1, 1, N, dtype=torch.float64)
    expected = torch.zeros_like(q)
    for i in range(N):
        s = [float(q[0, 0, i] @ k[0, 0, j]) / math.sqrt(D) for j in range(i + 1)]
        kept = [j for j in range(i + 1) if s[j] > 0]
        logit = {j: s[j] + sum(math.log(torch.sigmoid(forget[0, 0, l]).item()) for l in kept if l >= j) for j in kept}
        if kept:
            z = sum(math.exp(t) for t in logit.values())
            expected[0, 0, i] = sum(math.exp(logit[j]) / z * v[0, 0, j] for j in kept)
    for form in ("reference", "chunked"):
        out = attnkit.attention(q, k, v, "tra", causal=True, forget=forget, form=form, q_chunk=4, kv_chunk=3)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("form", ["reference", "chunked"])
def test_an_irrelevant_key_inserted_anywhere_changes_nothing_for_the_query(form):
    """Selective sparsity and contextual distance together: a key the query scores below zero gets no weight
    and does not lengthen the distance to the keys before it (with token distance it would)."""
    torch.manual_seed(1)
    N, D, at = 12, 8, 5
    q, k, v = (torch.randn(1, 2, N, D, dtype=torch.float64) for _ in range(3))
    forget = torch.randn(1, 2, N, dtype=torch.float64)
    last = q[:, :, -1:]
    irrelevant = -last  # score -|q|^2 * scale < 0 for the last query
    k2 = torch.cat([k[:, :, :at], irrelevant, k[:, :, at:]], dim=2)
    v2 = torch.cat([v[:, :, :at], 100 * torch.randn(1, 2, 1, D, dtype=torch.float64), v[:, :, at:]], dim=2)
    f2 = torch.cat([forget[:, :, :at], torch.full((1, 2, 1), -5.0, dtype=torch.float64), forget[:, :, at:]], dim=2)
    kw = dict(causal=True, form=form, q_chunk=4, kv_chunk=5)
    before = attnkit.attention(last, k, v, "tra", forget=forget, **kw)
    after = attnkit.attention(last, k2, v2, "tra", forget=f2, **kw)
    torch.testing.assert_close(after, before)
    weights = tra_weights(last, k2, mask=None, scale=D ** -0.5, forget=f2)
    assert (weights[..., at] == 0).all()


def test_a_query_that_keeps_no_key_outputs_zeros():
    q = torch.ones(1, 1, 4, 2, dtype=torch.float64)
    k = -torch.ones(1, 1, 4, 2, dtype=torch.float64)
    v = torch.randn(1, 1, 4, 2, dtype=torch.float64)
    forget = torch.zeros(1, 1, 4, dtype=torch.float64)
    for form in ("reference", "chunked"):
        out = attnkit.attention(q.requires_grad_(), k, v, "tra", causal=True, forget=forget, form=form)
        assert (out == 0).all()
        out.sum().backward()
        assert torch.isfinite(q.grad).all()
        q.grad = None


def test_the_layer_learns_the_forget_gates_and_decodes_incrementally():
    torch.manual_seed(2)
    layer = attnkit.nn.Attention(32, heads=4, kv_heads=2, mechanism="tra", qk_norm=True).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    assert_continues_in_pieces(layer, x, (3, 6, 9), causal=True)
    layer(x, causal=True).sum().backward()
    assert layer.inputs.proj.weight.grad.abs().sum() > 0
