"""bench deconstruct: the plan, the schedules and one tiny training with its skip probe."""
from __future__ import annotations

import argparse

import pytest

from attnkit.bench.suites import deconstruct


def args(**kw):
    base = dict(variants=["mlp"], configs=["uniform", "hybrid"], layers=4, dim=16, heads=2, context=16, batch=2,
                steps=2, eval_tokens=64, seed=0)
    return argparse.Namespace(**{**base, **kw})


def test_plan_and_schedules():
    config = deconstruct.configure(args())
    assert deconstruct.plan(config) == [{"variant": "standard", "config": "uniform"},
                                        {"variant": "mlp", "config": "uniform"}, {"variant": "mlp", "config": "hybrid"}]
    assert deconstruct.schedule("hybrid", 4) == "DFDF" and deconstruct.schedule("uniform", 3) == "DDD"


def test_bad_options_fail_before_work():
    with pytest.raises(ValueError, match="variants"):
        deconstruct.configure(args(variants=["mpl"]))
    with pytest.raises(ValueError, match="configs"):
        deconstruct.configure(args(configs=["both"]))


def test_a_hybrid_item_trains_and_measures_its_skip_probe():
    config = deconstruct.configure(args(variants=["fixed_seq_qk"]))
    row = deconstruct.measure_item({"variant": "fixed_seq_qk", "config": "hybrid"}, config)
    assert row["steps"] == 2 and row["perplexity"] > 1 and row["skip_perplexity"] > 1
