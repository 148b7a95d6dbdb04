"""`attnkit train seq2seq` runs end to end on a tiny budget (the quality targets are checked by the command itself)."""
import json

import pytest

from attnkit.cli import main


@pytest.mark.parametrize("task", ["sort", "reverse"])
def test_seq2seq_trains_and_reports_test_accuracy(task, capsys):
    assert main(["train", "seq2seq", "--task", task, "--length", "4", "--hidden", "8", "--batch", "4",
                 "--max-steps", "2", "--eval-every", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == task and result["steps"] <= 2 and 0 <= result["test_exact"] <= 1 and 0 <= result["test_token"] <= 1
