"""attnkit bench sparse --speed at a tiny size: prefill and decode rows are stored apart, with their ratios."""
from attnkit.bench.free_sparse_runs import DECODE, PREFILL, top_k_for_density

from .stored import run_suite


def test_speed_stores_prefill_and_decode_rows(tmp_path):
    _, rows = run_suite(tmp_path, "sparse", "--speed", "--n", "320", "--repeats", "1", "--steps", "2")
    assert sorted(r["section"] for r in rows) == ["decode", "prefill"]
    for r in rows:
        assert "error" not in r, r
    prefill = next(r for r in rows if r["section"] == "prefill")["rows"]
    decode = next(r for r in rows if r["section"] == "decode")["rows"]
    assert [r["method"] for r in prefill] == list(PREFILL) and [r["method"] for r in decode] == list(DECODE)
    for r in prefill:
        assert r["speedup"] > 0 and 0 < r["density"] <= 1 and 0 < r["recall"] <= 1 + 1e-9
    for r in decode:
        assert r["ratio_to_sdpa"] > 0 and 0 < r["recall"] <= 1 + 1e-9


def test_block_topk_is_sized_for_the_asked_density():
    assert top_k_for_density(256, 0.1) == 13
    assert top_k_for_density(4, 1.0) == 4
