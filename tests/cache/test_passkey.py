"""Passkey prompts and the training batches that teach the task."""
import re

import pytest
import torch

from attnkit.data import passkey
from attnkit.data.codecs import make_codec

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 40


def test_prompts_state_the_key_at_spread_depths_and_end_with_the_cue():
    codec = make_codec("byte", TEXT)
    ids, keys = passkey.prompts(codec, codec.encode(TEXT), context=160, trials=4)
    assert ids.shape == (4, 160) and all(len(k) == 5 and k.isdigit() for k in keys)
    texts = [codec.decode(row.tolist()) for row in ids]
    depths = [t.index(passkey.STATEMENT.format(key=k)) for t, k in zip(texts, keys)]
    assert all(t.endswith(passkey.CUE) for t in texts) and depths == sorted(depths) and depths[0] < depths[-1]


def test_training_batches_end_rows_with_whole_episodes_and_weight_their_answers():
    codec = make_codec("byte", TEXT)
    ids = codec.encode(TEXT)
    w, weights = passkey.training_batch(codec, ids, 128, 8, 0.5, torch.Generator().manual_seed(0))
    assert w.shape == (8, 129) and weights.shape == (8, 128)
    texts = [codec.decode(row.tolist()) for row in w]
    for text, weight in zip(texts[:4], weights[:4]):  # half the rows: an episode ends the window
        key = re.search(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", text).group(1)
        assert text.endswith(f"{passkey.CUE} {key}.")
        assert weight[-6:-1].tolist() == [passkey.ANSWER_WEIGHT] * 5 and weight[-1] == 1  # the digits, not the "."
        assert (weight != 1).sum() == 5
    for text in texts[4:6]:  # a quarter: a random block of letters and digits written twice (the text has no digits)
        grams = [text[i : i + 8] for i in range(len(text) - 7) if re.fullmatch(r"[0-9a-z]*\d[0-9a-z]*", text[i : i + 8])]
        assert any(grams.count(g) == 2 for g in grams)
    assert not any(re.search(r"\d", text) for text in texts[6:])
    assert (weights[4:] == 1).all()
    with pytest.raises(ValueError, match="share"):
        passkey.training_batch(codec, ids, 128, 8, 1.5, torch.Generator())
    with pytest.raises(ValueError, match="context"):
        passkey.training_batch(codec, ids, 40, 8, 0.5, torch.Generator())
    with pytest.raises(ValueError, match="no room"):
        passkey.episode(codec, ids, 40, "12345", 0.5, answer=True)


def test_train_lm_with_passkey_batches_runs_and_reports_its_accuracy(capsys):
    from attnkit.cli import main

    assert main(["train", "lm", "--layers", "1", "--dim", "16", "--context", "96", "--batch", "4", "--passkey", "0.5",
                 "--max-steps", "2", "--eval-tokens", "256", "--sample", "0", "--threads", "1"]) == 0
    assert "passkey accuracy 0.0 at 96 tokens" in capsys.readouterr().out
    assert main(["train", "lm", "--context", "40", "--passkey", "0.5", "--max-steps", "1"]) == 2
    assert "a passkey episode needs a context of at least" in capsys.readouterr().err
