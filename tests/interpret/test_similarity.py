"""A MiniLM sentence-pair similarity explained token by token."""
from __future__ import annotations

import pytest

from attnkit.integrations import minilm
from attnkit.interpret import explain_similarity

FIRST, SECOND = "The committee approved the annual budget.", "How much money is in the budget?"


@pytest.mark.parametrize("method", ["contribution", "rollout", "relevancy"])
def test_scores_sum_to_the_similarity_and_the_shared_word_leads(minilm_model, method):
    model, tokenizer = minilm_model
    e = explain_similarity(model, tokenizer, FIRST, SECOND, method=method)
    expected = minilm.embed(model, tokenizer, [FIRST, SECOND])
    assert abs(e.similarity - float(expected[0] @ expected[1])) < 1e-5
    assert abs(sum(e.scores_a) - e.similarity) < 1e-5 and abs(sum(e.scores_b) - e.similarity) < 1e-5
    assert e.tokens_a[0] == "[CLS]" and len(e.tokens_a) == len(e.scores_a)
    assert model.config._attn_implementation == "eager"  # restored
    if method != "rollout":  # rollout sends most of the mass to [CLS], the sink of this encoder
        words_a = [t for t in e.tokens_a if t not in ("[CLS]", "[SEP]")]
        assert max(zip(e.scores_a, e.tokens_a))[1] == "budget" and "budget" in words_a
        assert max(zip(e.scores_b, e.tokens_b))[1] == "budget"


def test_flow_on_a_short_pair_and_bad_arguments(minilm_model):
    model, tokenizer = minilm_model
    e = explain_similarity(model, tokenizer, "cats", "a cat", method="flow")
    assert abs(sum(e.scores_b) - e.similarity) < 1e-5
    with pytest.raises(ValueError, match="method"):
        explain_similarity(model, tokenizer, "a", "b", method="saliency")
    with pytest.raises(ValueError, match="second"):
        explain_similarity(model, tokenizer, "a", "  ")
