"""attnkit bench rag at a tiny size: the accuracies and the prefill ratio are stored."""
from __future__ import annotations

from .stored import run_suite


def test_bench_rag_stores_accuracies_and_the_prefill_ratio(tmp_path):
    _, rows = run_suite(tmp_path, "rag", "--steps", "2", "--finetune-steps", "1", "--passages", "2",
                        "--passage-len", "6")
    accuracy, timing = rows
    assert all(0 <= accuracy[k] <= 1 for k in ("full_attention", "reuse_without_finetuning", "block_attention_reuse"))
    assert timing["reuse_over_full"] > 0 and timing["prompt_tokens"] == 14
