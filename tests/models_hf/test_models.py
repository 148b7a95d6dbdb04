"""DecoderLM / Encoder built from layer schedules: stateful generation, padding, config errors."""
import pytest
import torch

import attnkit
from attnkit.models import DecoderLM, Encoder, ModelConfig
from attnkit.nn.inputs import has_input_module

from .lm_checks import assert_generate_equals_recompute


def stateful_mechanisms() -> list[str]:
    """Registered mechanisms a decoder layer can run incrementally (causal-self with a step form)."""
    out = []
    for name in attnkit.mechanisms():
        spec = attnkit.spec(name)
        if "causal-self" in spec.patterns and spec.step is not None and (not spec.tensor_names or has_input_module(name)):
            out.append(name)
    return out


def hybrid_config(second: str, **kw) -> ModelConfig:
    # The mechanism's own test parameters (e.g. sigmoid's fixed n, needed for incremental use).
    mixer = {"mechanism": second, **attnkit.spec(second).test_params}
    mixers = {"F": "softmax", "L": mixer, "H": {"hymba": ["softmax", mixer]}}
    return ModelConfig(vocab_size=40, dim=32, heads=4, kv_heads=2, schedule="LFH", mixers=mixers, **kw)


@pytest.mark.parametrize("mechanism", stateful_mechanisms())
def test_generate_with_states_equals_full_recompute(mechanism):
    torch.manual_seed(0)
    lm = DecoderLM(hybrid_config(mechanism)).eval()
    prompt = torch.randint(0, 40, (2, 5))
    out = assert_generate_equals_recompute(lm, prompt, 6)
    with torch.no_grad():
        full = lm(out)
        a, state = lm(out[:, :4], return_state=True)
        b, state = lm(out[:, 4:9], state=state, return_state=True)
        c, _ = lm(out[:, 9:], state=state, return_state=True)
    assert (torch.cat([a, b, c], 1) - full).abs().max() < 1e-5


def test_schedule_builds_the_named_mechanism_per_layer():
    lm = DecoderLM(ModelConfig(vocab_size=10, dim=16, heads=2, schedule="AAF", mixers={"A": "alibi", "F": "softmax"}))
    assert [b.mixer.mechanism for b in lm.blocks] == ["alibi", "alibi", "softmax"]
    hy = DecoderLM(hybrid_config("alibi"))
    assert [b.mechanism for b in hy.blocks[2].mixer.branches] == ["softmax", "alibi"]
    assert hy.blocks[2].mixer.branches[0].heads == 2


def test_encoder_padding_encodes_each_sequence_as_if_alone():
    torch.manual_seed(0)
    enc = Encoder(hybrid_config("alibi")).eval()
    tokens = torch.randint(0, 40, (2, 7))
    real = torch.ones(2, 7, dtype=torch.bool)
    real[1, 4:] = False
    with torch.no_grad():
        both = enc(tokens, real)
        alone = enc(tokens[1:, :4])
    assert (both[1, :4] - alone[0]).abs().max() < 1e-5


def test_config_and_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="letters"):
        ModelConfig(schedule="LF", mixers={"F": "softmax"})
    with pytest.raises(ValueError, match="unknown mechanism"):
        ModelConfig(schedule="F", mixers={"F": "no-such-mechanism"})
    with pytest.raises(ValueError, match="hymba"):
        ModelConfig(schedule="H", mixers={"H": {"hymba": ["softmax"]}})
    with pytest.raises(ValueError, match="split evenly"):
        DecoderLM(ModelConfig(dim=24, heads=3, schedule="H", mixers={"H": {"hymba": ["softmax", "alibi"]}}))
    lm = DecoderLM(ModelConfig(vocab_size=10, dim=16, heads=2, schedule="F"))
    with pytest.raises(TypeError, match="tokens"):
        lm(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate(torch.zeros(1, 3, dtype=torch.long), -1)


def test_based_hybrid_with_sliding_window_layers_decodes_statefully():
    """Based's architecture: Taylor linear-attention layers interleaved with sliding-window softmax layers."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, dim=32, heads=4, schedule="BWBW", rope=False,
                         mixers={"B": "based", "W": {"mechanism": "sliding_window", "window": 4, "rope": True}})
    lm = DecoderLM(config).eval()
    assert [m["mechanism"] for m in config.layer_mixers()] == ["based", "sliding_window"] * 2
    tokens = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full = lm(tokens)
        a, state = lm(tokens[:, :5], return_state=True)
        b, _ = lm(tokens[:, 5:], state=state, return_state=True)
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-5
