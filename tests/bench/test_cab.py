"""CAB: the probed pattern matrix and the efficiency-length rule."""
from attnkit.bench.suites.cab import efficiency_length, probe
from attnkit.registry import PATTERNS


def test_probe_runs_every_pattern_and_agrees_with_the_specs():
    assert probe("softmax") == {**{p: "ok" for p in PATTERNS}, "disagrees_with_spec": []}
    causal_only = probe("retention")
    assert causal_only["causal-self"] == "ok"
    assert all(causal_only[p] == "refused" for p in PATTERNS if p != "causal-self")
    assert causal_only["disagrees_with_spec"] == []


def test_efficiency_length():
    base = {256: 1.0, 1024: 16.0, 4096: 256.0}  # quadratic
    # 2x slower at 1024, 2x faster at 4096: the log-ratio crosses zero half way, at N = 2048
    assert efficiency_length({256: 4.0, 1024: 32.0, 4096: 128.0}, base) == "2048"
    assert efficiency_length({256: 0.5, 1024: 2.0, 4096: 8.0}, base) == "<= 256"
    assert efficiency_length({256: 9.0, 1024: 99.0, 4096: 999.0}, base) == "> 4096"
    assert efficiency_length({256: 9.0, 1024: 1.0, 4096: 999.0}, base) == "> 4096"  # must stay cheaper
    assert efficiency_length({}, base) == "n/a"


def test_efficiency_table_takes_zero_memory_growth():
    from attnkit.bench.suites.cab import efficiency_table

    rows = [{"mechanism": m, "form": f, "causal": True, "N": n, "seconds": t * n, "peak_mb": mb}
            for m, f, t, mb in (("softmax", "sdpa", 1.0, 5.0), ("softmax", "reference", 2.0, 9.0),
                                ("lin", None, 0.5, 0.0)) for n in (256, 1024)]
    assert efficiency_table(rows) == [{"mechanism": "lin", "time vs sdpa": "<= 256", "memory vs sdpa": "<= 256",
                                       "time vs reference": "<= 256", "memory vs reference": "<= 256"}]
