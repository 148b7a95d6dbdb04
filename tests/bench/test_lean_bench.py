"""``attnkit bench lean`` on short contexts: a row per (batch, context), LeanAttention equal to SDPA."""
from .stored import run_suite


def test_bench_lean_stores_a_row_per_batch_and_context(tmp_path):
    _, rows = run_suite(tmp_path, "lean", "--n", "300,700", "--batch", "1,2", "--heads", "4", "--kv-heads", "2",
                        "--head-dim", "16", "--tile", "32", "--repeats", "1")
    assert sorted((r["batch"], r["n"]) for r in rows) == [(1, 300), (1, 700), (2, 300), (2, 700)]
    assert all("error" not in r and r["max_abs_diff"] < 1e-5 and r["sdpa_ratio"] > 0 for r in rows)
