"""``attnkit bench kv`` on short contexts: every policy's row is stored with its budget honoured."""
import pytest

from .stored import run_suite

pytest.importorskip("transformers")


def test_bench_kv_stores_quality_memory_and_speed_per_policy(tmp_path):
    run, rows = run_suite(tmp_path, "kv", "--context", "96", "--decode", "2", "--ppl-context", "48", "--windows", "2",
                        "--policies", "streaming,knorm,kivi8,razor", "--budgets", "0.25", "--slack", "0",
                        "--chunk", "16")
    by_policy = {r["policy"]: r for r in rows}
    assert set(by_policy) == {"full", "streaming", "knorm", "kivi8", "razor"} and not any("error" in r for r in rows)
    full = by_policy["full"]
    assert full["perplexity_vs_full"] == 1.0 and full["argmax_agreement"] == 1.0
    token_bytes = 2 * 2 * 32 * 4  # tiny Llama layer: 2 kv heads x head_dim 32, keys and values, float32
    assert full["full_bytes"] == 2 * 96 * token_bytes  # two layers
    squeezed = by_policy["streaming"]
    assert squeezed["bytes_after_prefill"] == 2 * 2 * (24 + 1) * (2 * 32 * 4 + 4)  # layers x kv heads x (24 kept + 1 free slot) x (k, v, position)
    assert squeezed["peak_vs_full"] < 0.3 and squeezed["decode_tokens_per_s"] > 0
    assert squeezed["prefill_mode"] == "chunked exact" and by_policy["razor"]["prefill_mode"] == "chunked exact"
    # chunked prefill, evicting in place: each layer one buffer of budget (24) + chunk (16) tokens
    assert squeezed["prefill_peak_vs_full"] == round((24 + 16) * (2 * 32 * 4 + 4) / (96 * 2 * 32 * 4), 4)
    from attnkit.bench.suites import kv

    page, tables = kv.report(run, rows)  # memory, prefill memory, tokens/s and perplexity against the budget
    assert page.count("data:image/png") == 4 and len(tables["kv"]) == 5


def test_quality_and_memory_run_apart_from_speed_and_the_report_joins_them(tmp_path, capsys):
    from attnkit.bench.store import Store
    from attnkit.bench.suites import kv

    common = ("--context", "128", "--decode", "2", "--ppl-context", "64", "--windows", "2", "--policies", "streaming",
              "--budgets", "0.25", "--slack", "0", "--chunk", "16")
    _, slow = run_suite(tmp_path, "kv", *common, "--measure", "quality,memory")
    assert "decode_vs_full" not in slow[1] and slow[1]["peak_vs_full"] < 0.35 and "perplexity" in slow[1]
    assert "cache peak <= 0.35x full" in capsys.readouterr().out  # the targets this run measured, met or not
    _, fast = run_suite(tmp_path, "kv", *common, "--measure", "speed")
    assert "perplexity" not in fast[1] and fast[1]["decode_tokens_per_s"] > 0
    run, rows = kv.latest(Store(tmp_path / "results.sqlite", create=False))
    joined = {r["policy"]: r for r in rows}["streaming"]
    assert joined["perplexity"] == slow[1]["perplexity"] and joined["decode_vs_full"] == fast[1]["decode_vs_full"]
    assert [j["measure"] for j in run["joined"]] == ["speed", "quality,memory"]
    page, tables = kv.report(run, rows)
    assert "rows joined from" in page and {t["target"] for t in tables["kv_targets"]} == {
        "cache peak <= 0.35x full", "decode >= 1.0x full tokens/s"}


def test_the_lm_decoding_peak_counts_the_buffers_an_eviction_copied_out_of():
    import torch

    from attnkit.bench.kv_runs import AttnkitLM
    from attnkit.bench.suites.kv import decode_memory
    from attnkit.cache import StreamingLLM
    from attnkit.models import DecoderLM, ModelConfig

    torch.manual_seed(0)
    lm = AttnkitLM(DecoderLM(ModelConfig(vocab_size=97, dim=32, heads=4, kv_heads=2, schedule="FF")))
    _, recorded = lm.prefill(torch.randint(0, 97, (1, 64)))
    memory = decode_memory(lm, recorded, StreamingLLM(16), tokens=3)
    per_token = 2 * (2 * 8 * 4 + 4)  # 2 kv heads x (key + value of 8 float32 + int32 position)
    assert memory["bytes_after_prefill"] == 2 * 17 * per_token  # 16 kept + 1 free slot per layer
    # each step copies every layer's kept tokens to a new buffer of 17 slots; the states passed in are still held
    assert memory["peak_bytes"] == 2 * (17 + 17) * per_token
