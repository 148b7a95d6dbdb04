"""A DecoderLM whose layers split the sequence across 2 ranks (ModelConfig.context_parallel) equals the
single-process model: logits and every parameter's gradient (summed over the ranks)."""
import pytest
import torch
import torch.distributed as dist

from attnkit.distributed import Sharding
from attnkit.models import DecoderLM, ModelConfig

from .spawn import run

N, VOCAB = 16, 32
TOL = 1e-5
# LASP-2H: linear layers on LASP-2, softmax layers on all-gather; and a ring scheme with ALiBi and a Hymba layer
SCHEMES = [dict(schedule="LFL", mixers={"L": "gla", "F": "softmax"}, context_parallel="lasp2h"),
           dict(schedule="AH", mixers={"A": "alibi", "H": {"hymba": ["softmax", "linear"]}}, context_parallel="ring")]


def _model(config: dict, parallel: bool):
    torch.manual_seed(0)
    kw = dict(config) if parallel else {k: v for k, v in config.items() if k != "context_parallel"}
    return DecoderLM(ModelConfig(vocab_size=VOCAB, dim=32, heads=4, **kw))


def _tokens():
    return torch.randint(VOCAB, (2, N + 1), generator=torch.Generator().manual_seed(1))


def _loss(model, inputs, targets):
    logits = model(inputs)
    return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def _single(config):
    model, tokens = _model(config, False), _tokens()
    logits, loss = _loss(model, tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def expected():
    return [_single(c) for c in SCHEMES]


def _every_scheme(rank, world, expected):
    for config, (logits, grads) in zip(SCHEMES, expected):
        model, tokens = _model(config, True), _tokens()
        sh = Sharding(N, layout=model.config.context_parallel_layout())
        mine, loss = _loss(model, sh.shard(tokens[:, :-1], dim=1), sh.shard(tokens[:, 1:], dim=1))
        loss.backward()
        err = (sh.gather(mine.detach(), dim=1) - logits).abs().max().item()
        assert err <= TOL, f"{config['context_parallel']}: logits differ by {err:.2e}"
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            err = (p.grad - grads[name]).abs().max().item()
            assert err <= TOL, f"{config['context_parallel']}: gradient of {name} differs by {err:.2e}"


def test_context_parallel_model_matches_single_process(expected):
    run(2, _every_scheme, expected)


def test_schemes_and_layouts():
    hybrid = ModelConfig(schedule="LF", mixers={"L": "gla", "F": "softmax"}, context_parallel="lasp2h")
    assert [s["strategy"] for s in hybrid.layer_mixers()] == ["lasp2", "allgather"]
    assert hybrid.context_parallel_layout() == "contiguous"
    ring = ModelConfig(schedule="FF", mixers={"F": "alibi"}, context_parallel="burst")
    assert [s["strategy"] for s in ring.layer_mixers()] == ["burst", "burst"]
    assert ring.context_parallel_layout() == "zigzag"
    assert ModelConfig().context_parallel_layout() is None
    with pytest.raises(ValueError, match="context_parallel must be None or one of"):
        ModelConfig(context_parallel="tensor")


def _example(rank, world):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "examples" / "train_context_parallel.py"
    spec = importlib.util.spec_from_file_location("train_context_parallel", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.train("lasp2h", "LF", seq=32, steps=3, dim=32, vocab=16, device="cpu", log=lambda line: None)
    assert len(losses) == 3 and all(0 < x < 10 for x in losses), losses


def test_training_example_runs_on_two_ranks():
    """A smoke run of examples/train_context_parallel.py's loop (LASP-2H, 3 steps)."""
    run(2, _example)
