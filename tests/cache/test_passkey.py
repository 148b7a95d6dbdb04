"""Passkey prompts and the training stream with passkey episodes mixed in."""
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


def test_the_mixed_stream_holds_whole_episodes_with_their_answers_at_the_share_asked():
    codec = make_codec("byte", TEXT)
    ids = codec.encode(TEXT)
    mixed = passkey.mixed(codec, ids, 0.25, context=128)
    assert abs((mixed.numel() - ids.numel()) / mixed.numel() - 0.25) < 0.05
    text = codec.decode(mixed.tolist())
    statements = re.findall(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", text)
    answers = re.findall(r"The pass key is (\d{5})\.(?! Remember)", text)  # the cue and its answer
    assert len(answers) > 5 and answers == statements  # each episode: its statement, then the cue with that key
    with pytest.raises(ValueError, match="share"):
        passkey.mixed(codec, ids, 1.0, context=128)
    with pytest.raises(ValueError, match="no room"):
        passkey.episode(codec, ids, 40, "12345", 0.5, answer=True)
