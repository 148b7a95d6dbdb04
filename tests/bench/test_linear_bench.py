"""``attnkit bench linear --quick``: every section runs and every stateful mechanism is listed."""
from attnkit import registry
from attnkit.bench import linear


def test_bench_linear_quick_lists_every_stateful_mechanism(capsys):
    assert linear.main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("chunked", "t(4N)/t(N)", "% of GEMM", "slowest / fastest step", "softmax KV cache"):
        assert line in out
    stateful = [n for n in registry.names() if registry.get(n).stateful_forms is not None]
    assert stateful and all(f"  {name} " in out for name in stateful)
