"""The `attnkit masks` command and the `attnkit bench kernels` JSON contract (tiny sizes, no timing asserted)."""
from __future__ import annotations

import json

from attnkit.cli import main


def test_masks_show_writes_a_picture(tmp_path, capsys):
    out = tmp_path / "mask.png"
    assert main(["masks", "show", "document_causal", "--n", "48", "--block", "8", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "density=" in capsys.readouterr().out
    assert main(["masks", "show", "no_such_pattern"]) == 2


def test_bench_kernels_writes_json_rows(tmp_path):
    path = tmp_path / "rows.json"
    db = tmp_path / "results.sqlite"
    argv = ["bench", "kernels", "--patterns", "sliding_window_causal", "--n", "256", "--heads", "1",
            "--directions", "fwd,fwdbwd", "--repeats", "1", "--no-flex", "--json", str(path), "--db", str(db),
            "--no-progress"]
    assert main(argv) == 0
    rows = json.loads(path.read_text())
    from attnkit.bench._store import Store

    assert Store(db).rows(Store(db).latest_run("kernels")["id"]) == rows  # stored for `attnkit report`
    assert [r["direction"] for r in rows] == ["fwd", "fwdbwd"]
    for r in rows:
        for key in ("suite", "pattern", "n", "direction", "seconds", "peak_mb", "gflops", "gemm_ratio",
                    "sdpa_ratio", "flex_ratio"):
            assert key in r
        assert r["seconds"] > 0 and r["sdpa_ratio"] is not None and r["flex_ratio"] is None
