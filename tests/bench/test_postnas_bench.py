"""bench postnas: options are checked against the checkpoint before any work; one tiny search runs."""
from __future__ import annotations

import argparse

import pytest
import torch

from attnkit.bench.suites import postnas
from attnkit.data.codecs import make_codec
from attnkit.models import DecoderLM, ModelConfig
from attnkit.training.lm import TrainConfig, save_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, dim=16, heads=2, schedule="FFF"))
    path = tmp_path / "lm.pt"
    save_checkpoint(path, model, make_codec("byte", ""), TrainConfig(minutes=1.0))
    return str(path)


def args(checkpoint, **kw):
    base = dict(checkpoint=checkpoint, linear=["gla"], keep=[1], steps=2, context=16, batch=2, lr=1e-3, beam=1,
                passage=6, seed=0)
    return argparse.Namespace(**{**base, **kw})


def test_bad_options_fail_before_work(checkpoint):
    with pytest.raises(ValueError, match="--checkpoint is required"):
        postnas.configure(args(None))
    with pytest.raises(ValueError, match="keep"):
        postnas.configure(args(checkpoint, keep=[3]))
    with pytest.raises(ValueError, match="passage"):
        postnas.configure(args(checkpoint, passage=9))


def test_one_candidate_trains_and_is_searched(checkpoint):
    config = postnas.configure(args(checkpoint))
    row = postnas.measure_item({"linear": "gla"}, config)
    assert {s["objective"] for s in row["searches"]} == {"lm", "retrieval"}
    assert row["searches"][0]["best"]["full_layers"] in ([0], [1], [2])
