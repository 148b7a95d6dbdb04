"""``attnkit bench delta`` on a short sequence: every form runs, and the floor lists its matmuls."""
from attnkit.bench import delta
from attnkit.bench.delta import matmul_seconds


def test_bench_delta_prints_forms_and_floor(capsys):
    assert delta.main(["--seq", "96", "--chunk-size", "32", "--mechanism", "kda", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("chunked", "recurrent", "parallel", "floor", "chunk  16", "chunk  64", "at 100% of GEMM"):
        assert line in out


def test_floor_times_each_part_of_the_chunked_form(monkeypatch):
    """The floor's parts follow the kernel's matmuls: count FLOPs instead of seconds to check the shapes."""
    monkeypatch.setattr(delta, "bmm_seconds", lambda batch, m, k, n: 2 * batch * m * k * n)
    heads, N, D, C = 2, 128, 8, 32
    parts = matmul_seconds(heads, N, D, C)
    chunks = heads * N // C
    assert parts["K K^T, Q K^T"] == 2 * 2 * chunks * C * D * C
    # two 16-blocks: three Neumann steps of two products each; substitution: 3 block products per rhs
    assert parts["UT solve"] == 6 * 2 * chunks * 2 * 16**3 + 2 * 3 * 2 * chunks * 16 * 16 * D
    assert parts["W S, K^T U (in sequence)"] == 2 * (2 * chunks * C * D * D)
    assert parts["Q S, P U"] == 2 * chunks * C * D * D + 2 * chunks * C * C * D
