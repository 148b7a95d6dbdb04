"""attnkit bench sparse --speed at a tiny size: prefill and decode rows are stored apart, with their ratios."""
from attnkit.bench.free_sparse_runs import DECODE, PREFILL, decode_recall_summaries, top_k_for_density

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
    assert next(r for r in prefill if r["method"] == "block_topk")["t_floor"] > 0  # its layout's floor, timed
    for r in decode:
        assert r["ratio_to_sdpa"] > 0 and 0 < r["recall"] <= 1 + 1e-9
        assert sorted(r["floors"]) == ["copy Quest's chosen pages", "read Quest's bounds and chosen K, V in place",
                                       "stream 0.125 of K and V"] and all(x > 0 for x in r["floors"].values())


def test_memory_alone_stores_each_prefill_peak_against_sdpas(tmp_path):
    _, rows = run_suite(tmp_path, "sparse", "--memory", "--phases", "prefill", "--methods", "block_topk", "--n", "320")
    assert [r["section"] for r in rows] == ["prefill-memory"]  # no timing without --speed
    (row,) = rows[0]["rows"]
    assert row["method"] == "block_topk" and row["peak_mb"] >= 0 and row["sdpa_peak_mb"] >= 0
    assert row["peak_over_qkv"] == row["peak_mb"] / (3 * 320 * 8 * 64 * 4 / 2**20)


def test_block_topk_is_sized_for_the_asked_density():
    assert top_k_for_density(256, 0.1) == 13
    assert top_k_for_density(4, 1.0) == 4


def test_decode_recall_is_summarised_over_all_layers_and_without_the_first_two():
    rows = [{"phase": "decode", "method": m, "layer": i, "recall": r}
            for m, recalls in (("quest", (0.5, 0.7, 0.8, 1.0)), ("loki", (1.0, 1.0))) for i, r in enumerate(recalls)]
    rows.append({"phase": "prefill", "method": "hip", "layer": 0, "recall": 0.0})
    got = [(s["method"], s["layers"], round(s["recall"], 9)) for s in decode_recall_summaries(rows)]
    assert got == [("quest", "0-3", 0.75), ("quest", "2-3", 0.9), ("loki", "0-1", 1.0)]


def test_curves_rows_and_summary_on_a_tiny_lm():
    """--curves' measurement on a random tiny LM: per setting a density in (0, 1] and a quality; the summary
    averages seeds and gives an interval; the report draws it."""
    import torch

    from attnkit.bench import free_sparse_curves as curves
    from attnkit.bench.suites.sparse import report
    from attnkit.models import DecoderLM, ModelConfig

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=32, dim=32, heads=2, kv_heads=1, schedule="FF", mixers={"F": "softmax"}))
    model.eval()
    held = torch.randint(0, 32, (400,))
    rows = []
    for method in ("block_topk", "quest"):
        for seed in (0, 1):
            rows += curves.curve_rows(model, held, method=method, n=64, score=16, count=2, seed=seed)
    assert len(rows) == 16 and all(0 < r["density"] <= 1 and r["quality"] > 0 for r in rows)
    assert [r["density"] for r in rows[:4]] == sorted((r["density"] for r in rows[:4]), reverse=True)
    summary = curves.summarise(rows)
    assert len(summary) == 8 and all(s["seeds"] == 2 and s["quality_ci95"] >= 0 for s in summary)
    html, _ = report({}, [{"section": "curves", "rows": rows}])
    assert "density vs quality" in html
