"""``bench hybrid``: the model follows the schedule, is causal; the plan and the refusals."""
import pytest
import torch

from attnkit.bench.suites import build_parser, hybrid as suite
from attnkit.cli import main


def test_model_follows_the_schedule_and_is_causal():
    torch.manual_seed(0)
    model = suite.HybridMQARModel("LFL", {"L": "hgrn2", "F": "softmax"}, vocab=16, d_model=16, seq_len=12, heads=2)
    assert [getattr(m, "mechanism", "conv") for m in model.mixers] == ["conv", "hgrn2", "softmax", "hgrn2"]
    x = torch.randint(0, 16, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 16
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6) and not torch.allclose(a[:, 7:], b[:, 7:])


def test_plan_runs_the_all_softmax_schedule_once():
    args = build_parser("hybrid").parse_args(["--linear", "hgrn2,gla", "--schedules", "LLF,FFF", "--lrs", "1e-3"])
    items = suite.plan(suite.configure(args))
    assert [(it["linear"], it["schedule"]) for it in items] == [("hgrn2", "LLF"), ("-", "FFF"), ("gla", "LLF")]
    assert suite.ratio("LLLF") == "3:1"


@pytest.mark.parametrize("bad, match", [(["--schedules", "LLF,LF"], "one length"),
                                        (["--schedules", "LXF"], "L and F"),
                                        (["--linear", "hgrn3"], "hgrn2")])
def test_bad_configuration_is_refused_up_front(bad, match, capsys):
    assert main(["bench", "hybrid", *bad, "--db", "/nonexistent/never-created.sqlite"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
