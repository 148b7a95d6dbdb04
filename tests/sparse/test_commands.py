"""The `attnkit masks` command and the rows `attnkit bench kernels` stores (tiny sizes, no timing asserted)."""
from __future__ import annotations

import pytest

from attnkit.cli import main


def test_masks_show_writes_a_picture(tmp_path, capsys):
    out = tmp_path / "mask.png"
    assert main(["masks", "show", "document_causal", "--n", "48", "--block", "8", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "density=" in capsys.readouterr().out
    assert main(["masks", "show", "no_such_pattern"]) == 2


def test_bench_kernels_stores_rows_with_baselines(tmp_path):
    from tests.bench.stored import run_suite

    run, rows = run_suite(tmp_path, "kernels", "--patterns", "sliding_window_causal", "--n", "128", "--heads", "1",
                          "--head-dim", "16", "--directions", "fwd,fwdbwd", "--repeats", "1", "--no-flex")
    assert run["config"]["directions"] == ["fwd", "fwdbwd"]
    assert [r["direction"] for r in rows] == ["fwd", "fwdbwd"]
    for r in rows:
        assert r["pattern"] == "sliding_window_causal" and r["N"] == 128 and "n" not in r and "suite" not in r
        assert r["seconds"] > 0 and r["peak_mb"] is not None and r["sdpa_ratio"] > 0 and r["flex_ratio"] is None
        assert ("sdpa_peak_mb" in r) == (r["direction"] == "fwd")  # SDPA's memory: forward only
        assert r["gflops"] == pytest.approx(r["gemm_ratio"] * r["gemm_gflops"])
