"""The form a call runs is declared, named honestly, and explained (attnkit.dispatch, attnkit.explain)."""
from __future__ import annotations

import logging

import pytest
import torch

import attnkit
from attnkit.registry import ALL_PATTERNS, MechanismSpec


def _qkv(n=16, d=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 2, n, d, generator=g) for _ in range(3))


def test_the_default_form_is_declared_and_explained():
    q, k, v = _qkv()
    choice = attnkit.explain(q, k, v, "softmax", causal=True)
    assert (choice.form, choice.reason) == ("sdpa", "the default; skipped block_sparse (no mask: no tiles to skip)")
    assert attnkit.spec("softmax").default_order == ("block_sparse", "sdpa")
    assert attnkit.explain(q, k, v, "gla", causal=True, **attnkit.spec("gla").tensor_inputs(
        q, k, v, torch.Generator().manual_seed(0))).form == "chunked"
    assert attnkit.explain(q, k, v, "deltanet", causal=True, return_state=True,
                           beta=torch.rand(1, 2, 16)).form == "incremental"


def test_a_named_form_runs_itself_or_says_why_not():
    q, k, v = _qkv()
    window = torch.ones(16, 16, dtype=torch.bool).tril().triu(-3)
    sdpa = attnkit.attention(q, k, v, "softmax", mask=window, form="sdpa")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=window)
    assert torch.equal(sdpa, expected)
    assert attnkit.explain(q, k, v, "softmax", mask=window, form="sdpa").reason == "asked for with form="
    additive = torch.zeros(16, 16).masked_fill(~window, float("-inf"))
    with pytest.raises(ValueError, match="form='block_sparse' of mechanism 'sliding_window' cannot run this call: "
                                         "an additive torch.float32 mask"):
        attnkit.attention(q, k, v, "sliding_window", causal=True, mask=additive, form="block_sparse")
    # without form=, the mask mechanism runs its reference on an additive mask, and says so
    choice = attnkit.explain(q, k, v, "sliding_window", causal=True, mask=additive)
    assert choice.form == "reference" and "block_sparse (an additive" in choice.reason
    out = attnkit.attention(q, k, v, "sliding_window", causal=True, mask=additive)
    torch.testing.assert_close(out, attnkit.attention(q, k, v, "sliding_window", causal=True, mask=window))


def test_attention_logs_its_choice(caplog):
    q, k, v = _qkv()
    with caplog.at_level(logging.DEBUG, logger="attnkit"):
        attnkit.attention(q, k, v, "softmax", causal=True)
    assert "softmax: form 'sdpa' runs (the default; skipped block_sparse" in caplog.text


def test_a_spec_with_several_fast_forms_declares_its_default():
    def form(q, k, v, *, causal, mask, scale):
        return v

    with pytest.raises(ValueError, match="declare default_forms"):
        MechanismSpec(name="two", family="test", papers=(), patterns=ALL_PATTERNS, reference=form,
                      fast={"a": form, "b": form})
    with pytest.raises(ValueError, match="'c' in default_forms"):
        MechanismSpec(name="two", family="test", papers=(), patterns=ALL_PATTERNS, reference=form,
                      fast={"a": form, "b": form}, default_forms=("c",))
