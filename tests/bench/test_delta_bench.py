"""``attnkit bench delta`` on a short sequence: every form runs and is stored, and the floor lists its matmuls."""
from attnkit.bench.suites import delta
from attnkit.bench.suites.delta import matmul_seconds

from .stored import run_suite


def test_bench_delta_stores_forms_and_floor(tmp_path):
    _, (row,) = run_suite(tmp_path, "delta", "--n", "96", "--chunk-size", "32", "--mechanisms", "kda",
                          "--repeats", "1")
    assert row["mechanism"] == "kda" and row["N"] == 96
    for name in ("chunked_s", "recurrent_s", "parallel_s"):
        assert row[name] > 0
    assert row["recurrent_over_chunked"] == row["recurrent_s"] / row["chunked_s"]
    assert set(row["floor_s"]) == {"16", "32", "64"} and all(t > 0 for t in row["floor_s"].values())
    assert row["state_numbers"] > 0 and row["kv_cache_numbers"] == 2 * 8 * 96 * 64


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
