"""RoPE (and its scalings), NoPE and the absolute embeddings against their papers' formulas."""
from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.positional import ENCODINGS, LogScaling, NoPE, RandomizedPositions, RoPE, encoding
from attnkit.positional.absolute import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding, sinusoidal_embedding

D = 16
SCALINGS = [RoPE(D), RoPE(D, scaling="linear", factor=4.0), RoPE(D, scaling="ntk", factor=4.0),
            RoPE(D, scaling="yarn", factor=4.0, original_context=64)]


@pytest.mark.parametrize("rope", SCALINGS, ids=lambda r: str(r.scaling))
def test_rotated_dot_product_depends_only_on_offset(rope):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)

    def dot(m, n):
        qm = rope.rotate(q[None], torch.tensor([m]))[0]
        kn = rope.rotate(k[None], torch.tensor([n]))[0]
        return float(qm @ kn)

    for m, n in [(5, 2), (0, 7), (300, 299)]:
        for shift in (1, 13, 1000):
            assert dot(m, n) == pytest.approx(dot(m + shift, n + shift), abs=1e-9)
    assert dot(5, 2) != pytest.approx(dot(5, 3), abs=1e-6)  # it does depend on the offset


@pytest.mark.parametrize("rope", SCALINGS, ids=lambda r: str(r.scaling))
def test_rotation_tables_are_made_on_the_inputs_device(rope):
    # Under another default device, a table made on the default device and then moved would fail
    # (a meta tensor cannot be copied out): the frequencies must be made where the positions are.
    x = torch.randn(2, 3, D)
    expected = rope.rotate(x, torch.arange(3))
    with torch.device("meta"):
        got = rope.rotate(x, torch.arange(3, device="cpu"))
    assert got.device.type == "cpu" and torch.equal(got, expected)


def test_plain_rope_frequencies_and_norm():
    rope = RoPE(D, base=10000.0)
    expected = torch.tensor([10000.0 ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    assert torch.allclose(rope.inv_freq(), expected)
    x = torch.randn(3, D, dtype=torch.float64)
    assert torch.allclose(rope.rotate(x, torch.arange(3)).norm(dim=-1), x.norm(dim=-1))  # a rotation
    assert torch.equal(rope.rotate(x, torch.zeros(3, dtype=torch.long)), x)


def test_linear_scaling_is_position_interpolation():
    # Chen et al.: positions divided by the factor, i.e. every frequency divided by it.
    plain, linear = RoPE(D), RoPE(D, scaling="linear", factor=4.0)
    x = torch.randn(5, D, dtype=torch.float64)
    pos = torch.arange(0, 20, 4)
    assert torch.allclose(linear.rotate(x, pos), plain.rotate(x, pos // 4))


def test_ntk_scaling_base_and_lowest_frequency():
    s = 4.0
    ntk = RoPE(D, scaling="ntk", factor=s)
    base = 10000.0 * s ** (D / (D - 2))
    expected = torch.tensor([base ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    assert torch.allclose(ntk.inv_freq(), expected)
    plain = RoPE(D).inv_freq()
    assert ntk.inv_freq()[0] == plain[0]  # highest frequency kept
    assert ntk.inv_freq()[-1] == pytest.approx(float(plain[-1]) / s)  # lowest one interpolated by s


def test_yarn_ramp_and_temperature_follow_the_paper():
    s, L, alpha, beta = 4.0, 64, 1.0, 32.0
    yarn = RoPE(D, scaling="yarn", factor=s, original_context=L, beta_slow=alpha, beta_fast=beta)
    theta = [10000.0 ** (-2 * i / D) for i in range(D // 2)]
    expected = []
    for t in theta:
        r = L / (2 * math.pi / t)  # context length over wavelength
        gamma = 0.0 if r < alpha else 1.0 if r > beta else (r - alpha) / (beta - alpha)
        expected.append((1 - gamma) * t / s + gamma * t)
    assert torch.allclose(yarn.inv_freq(), torch.tensor(expected, dtype=torch.float64))
    # sqrt(1/t) = 0.1 ln s + 1 multiplies q and k, so the logits by its square.
    q, k = torch.randn(1, D, dtype=torch.float64), torch.randn(1, D, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.long)
    assert float(yarn.rotate(q, zero) @ yarn.rotate(k, zero).T) == pytest.approx(float(q @ k.T) * (0.1 * math.log(s) + 1) ** 2)


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_offsets_continue_positions(name):
    enc = encoding(name, D)
    q, k = torch.randn(1, 2, 10, D, dtype=torch.float64), torch.randn(1, 2, 10, D, dtype=torch.float64)
    fq, fk = enc.apply(q, k, q_offset=0, k_offset=0)
    pq, pk = enc.apply(q[:, :, 6:], k[:, :, 6:], q_offset=6, k_offset=6)
    assert torch.allclose(pq, fq[:, :, 6:]) and torch.allclose(pk, fk[:, :, 6:])


KEY_ENCODERS = {**{name: lambda name=name: encoding(name, D) for name in ENCODINGS},
                "rope-log-scaled": lambda: LogScaling(16, RoPE(D)),
                "randomized": lambda: RandomizedPositions(RoPE(D), 64, torch.Generator().manual_seed(3))}


@pytest.mark.parametrize("name", sorted(KEY_ENCODERS))
@pytest.mark.parametrize("k_offset", [0, 7])
def test_apply_keys_is_the_keys_of_apply(name, k_offset):
    q, k = torch.randn(1, 2, 5, D, dtype=torch.float64), torch.randn(1, 2, 10, D, dtype=torch.float64)
    _, expected = KEY_ENCODERS[name]().apply(q[:, :, :0], k, q_offset=0, k_offset=k_offset)
    assert torch.equal(KEY_ENCODERS[name]().apply_keys(k, k_offset=k_offset), expected)
    if name != "randomized":  # a fresh draw per call: its keys depend on the queries' span
        _, expected = KEY_ENCODERS[name]().apply(q, k, q_offset=k_offset + 5, k_offset=k_offset)
        assert torch.equal(KEY_ENCODERS[name]().apply_keys(k, k_offset=k_offset), expected)


def test_an_encoding_without_apply_keys_is_refused():
    class QueriesAndKeysOnly:
        def apply(self, q, k, *, q_offset, k_offset):
            return q, k

    q = torch.randn(1, 1, 3, D)
    with pytest.raises(TypeError, match="position must be a positional encoding"):
        attnkit.attention(q, q, q, "softmax", causal=True, position=QueriesAndKeysOnly())
    with pytest.raises(TypeError, match="apply_keys"):
        LogScaling(16, QueriesAndKeysOnly())


def test_nope_passes_through_and_bad_rope_arguments_are_refused():
    q = torch.randn(1, 1, 3, D)
    assert NoPE().apply(q, q, q_offset=0, k_offset=0)[0] is q
    with pytest.raises(ValueError, match="even head_dim"):
        RoPE(15)
    with pytest.raises(ValueError, match="scaling"):
        RoPE(D, scaling="bogus")
    with pytest.raises(ValueError, match="factor"):
        RoPE(D, scaling="linear", factor=0.5)
    with pytest.raises(ValueError, match="head_dim"):
        RoPE(D).rotate(torch.randn(2, 8), torch.arange(2))
    with pytest.raises(ValueError, match="unknown positional encoding"):
        encoding("alibi", D)


def test_sinusoidal_matches_attention_is_all_you_need():
    pe = sinusoidal_embedding(torch.arange(50), 8, dtype=torch.float64)
    for pos in (0, 1, 49):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert pe[pos, 2 * i] == pytest.approx(math.sin(angle))
            assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(angle))
    x = torch.zeros(2, 5, 8)
    module = SinusoidalPositionalEmbedding(8)
    assert torch.allclose(module(x, offset=3)[0], pe[3:8].float())
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.arange(3), 7)
    with pytest.raises(ValueError, match="shape"):
        module(torch.zeros(2, 5, 6))


def test_learned_embedding_offsets_and_range():
    module = LearnedPositionalEmbedding(16, 8)
    x = torch.zeros(1, 4, 8)
    assert torch.allclose(module(x, offset=2)[0], module.table.weight[2:6])
    with pytest.raises(ValueError, match="outside the learned table"):
        module(torch.zeros(1, 4, 8), offset=13)
    module(torch.zeros(1, 4, 8)).sum().backward()
    assert module.table.weight.grad[:4].abs().sum() > 0 and module.table.weight.grad[4:].abs().sum() == 0
