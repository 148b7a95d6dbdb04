"""``attnkit list --vision`` and ``attnkit bench vision`` (smallest run; checks the stored rows, not time)."""
import json

from attnkit import cli
from attnkit.nn import vision as V


def test_list_vision_json(capsys):
    assert cli.main(["list", "--vision", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [m.name for m in V.modules()]
    assert all(set(r) == {"name", "paper", "file"} for r in rows)


def test_bench_vision_stores_ratios(tmp_path):
    from tests.bench.stored import run_suite

    _, rows = run_suite(tmp_path, "vision", "--channels", "16", "--size", "8", "--batch", "1", "--heads", "2",
                        "--repeats", "1", "--only", "ECA,SwinBlock")
    assert [r["module"] for r in rows] == ["ECA", "SwinBlock"]
    assert all(r["forward_vs_conv3x3"] > 0 and r["forward_vs_global_attention"] > 0 for r in rows)


def test_bench_covers_every_catalogued_module():
    from attnkit.bench.suites.vision import configs

    assert sorted(configs(16, 2)) == sorted(m.name for m in V.modules())
