"""RoPE/NoPE layer schedules, SWAN's logarithmic scaling, sigmaReparam in models and the trainer's reports."""
import math

import torch

import attnkit
from attnkit.models import DecoderLM, ModelConfig, rope_nope_layers, swan_layers
from attnkit.nn import SigmaReparamLinear
from attnkit.positional import LogScaling, RoPE
from attnkit.training.metrics import attention_entropy_per_layer


def test_log_scaling_leaves_the_training_length_alone_and_grows_like_log_past_it():
    q = k = torch.ones(1, 1, 64, 2, dtype=torch.float64)
    scaled, same_k = LogScaling(16).apply(q, k, q_offset=0, k_offset=0)
    assert torch.equal(same_k, k) and torch.equal(scaled[0, 0, :16], q[0, 0, :16])
    torch.testing.assert_close(scaled[0, 0, 63, 0], torch.tensor(math.log(64) / math.log(16), dtype=torch.float64))
    later, _ = LogScaling(16).apply(q[:, :, :1], k, q_offset=63, k_offset=0)  # a decode step at position 63
    torch.testing.assert_close(later[0, 0, 0], scaled[0, 0, 63])


def test_log_scaling_wraps_rope_and_keeps_incremental_equal_to_one_shot():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8, dtype=torch.float64) for _ in range(3))
    position = LogScaling(8, inner=RoPE(8))
    full = attnkit.attention(q, k, v, causal=True, position=position)
    head, state = attnkit.attention(q[:, :, :25], k[:, :, :25], v[:, :, :25], causal=True, position=position, return_state=True)
    tail = attnkit.attention(q[:, :, 25:], k[:, :, 25:], v[:, :, 25:], causal=True, position=position, state=state)
    torch.testing.assert_close(torch.cat([head, tail], dim=2), full)


def test_layouts_interleave_local_rope_layers_with_global_nope_ones():
    layers = rope_nope_layers(8, window=16)
    assert layers["schedule"] == "LLLGLLLG"
    assert layers["mixers"]["G"] == {"mechanism": "softmax", "rope": False}
    assert layers["mixers"]["L"] == {"mechanism": "sliding_window", "rope": True, "window": 16}
    swan = swan_layers(6, window=16, train_length=64, every=2)
    assert swan["schedule"] == "LGLGLG" and swan["mixers"]["G"]["log_scaling"] == 64


def test_swan_model_generates_as_it_recomputes_past_its_training_length():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(dim=32, heads=2, **swan_layers(4, window=4, train_length=8))).eval()
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, 12)
    for i in range(5, 17):  # greedy: each generated token is the argmax of the full recomputation
        assert torch.equal(model(out[:, :i])[:, -1].argmax(-1), out[:, i])


def test_sigma_reparam_config_wraps_every_block_linear_and_entropy_is_reported():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(dim=32, heads=2, schedule="FF", sigma_reparam=True))
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, SigmaReparamLinear) for m in linears)
    windows = torch.randint(0, 256, (2, 17))
    entropy = attention_entropy_per_layer(model, windows)
    assert len(entropy) == 2 and all(0 < e <= math.log(16) + 1e-6 for e in entropy)
    again = DecoderLM(ModelConfig(**model.config.to_dict()))
    again.load_state_dict(model.state_dict())  # the checkpoint's config rebuilds the same parameters
