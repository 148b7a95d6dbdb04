"""attnkit bench block-transformer at a tiny size: both models of about equal size, the timings and ratios stored."""
from __future__ import annotations

from .stored import run_suite


def test_bench_block_transformer_compares_models_of_about_equal_parameters(tmp_path):
    _, (row,) = run_suite(tmp_path, "block-transformer", "--prompt", "9", "--new", "3", "--batch", "1", "--dim", "32",
                          "--repeats", "1")
    assert abs(row["plain_params"] - row["block_params"]) < 0.2 * row["block_params"]
    assert row["generate_speedup"] > 0 and row["decode_speedup"] > 0 and row["block_prefill_seconds"] > 0
