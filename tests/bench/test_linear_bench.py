"""``attnkit bench linear`` at a tiny size: every section runs and is stored, every stateful mechanism listed."""
from attnkit import registry

from .stored import run_suite


def test_bench_linear_stores_every_section_and_every_stateful_mechanism(tmp_path):
    _, rows = run_suite(tmp_path, "linear", "--n", "64", "--contexts", "32,64", "--repeats", "1")
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    (forms,) = by["forms"]
    assert forms["chunked_speedup"] == forms["parallel_s"] / forms["chunked_s"]
    assert forms["t4n_over_tn"] > 0 and 0 < forms["gemm_fraction"]
    (decode,) = by["decode"]
    assert decode["contexts"] == [32, 64] and len(decode["us_per_token"]) == 2
    assert decode["kv_cache_numbers"] == [2 * 8 * 32 * 64, 2 * 8 * 64 * 64]
    stateful = [n for n in registry.names() if registry.get(n).stateful_forms is not None]
    assert sorted(r["mechanism"] for r in by["state"]) == sorted(stateful)
    causal = [n for n in stateful if "causal-self" in registry.get(n).patterns]
    assert sorted(r["mechanism"] for r in by["chunked"]) == sorted(causal)
    assert all(r["chunked_s"] > 0 for r in by["chunked"])
