"""attnkit.nn layers follow torch's conventions: pickling, docstrings, factory kwargs, dropout,
parameters checked at construction, and no silent dtype cast."""
from __future__ import annotations

import inspect
import io

import pytest
import torch

import attnkit
import attnkit.nn as ann

LAYERS = {
    "Attention": lambda: ann.Attention(32, 4),
    "Attention-gla": lambda: ann.Attention(32, 4, mechanism="gla"),
    "Attention-window": lambda: ann.Attention(32, 4, mechanism="sliding_window", window=4),
    "MultiheadAttention": lambda: ann.MultiheadAttention(32, 4),
    "MultiScaleRetention": lambda: ann.MultiScaleRetention(32, 4),
    "Mamba2Layer": lambda: ann.Mamba2Layer(32),
    "RWKV7TimeMix": lambda: ann.RWKV7TimeMix(32, 4),
    "RWKV6TimeMix": lambda: ann.RWKV6TimeMix(32, 4),
    "PaTHAttention": lambda: ann.PaTHAttention(32, 4),
    "RelationalAttention": lambda: ann.RelationalAttention(32, 4, 3, max_len=16),
    "NystromAttention": lambda: ann.NystromAttention(32, 4),
    "WeightedGQA": lambda: ann.WeightedGQA(32, 4, kv_heads=2),
    "HeadEmbeddingAttention": lambda: ann.HeadEmbeddingAttention(32, 4, kv_heads=2),
    "PayBetterAttention": lambda: ann.PayBetterAttention(32, 4, variant="efficient"),
    "KeyDrivenGQA": lambda: ann.KeyDrivenGQA(32, 4, kv_heads=2),
    "MixtureOfHeads": lambda: ann.MixtureOfHeads(32, 4, shared_heads=1, active_heads=2),
    "PoolingByMultiheadAttention": lambda: ann.PoolingByMultiheadAttention(32, 4, seeds=2),
    "SlotAttention": lambda: ann.SlotAttention(3, 32),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layers_pickle_and_give_the_same_output(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().eval()
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(2, 6, 32)
    kw = {"causal": True} if name.startswith("Attention") else {}
    args = (x, x, x) if name == "MultiheadAttention" else (x,)
    torch.manual_seed(1)
    a = layer(*args, **kw)
    torch.manual_seed(1)
    b = loaded(*args, **kw)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_every_layer_class_has_a_docstring():
    classes = [getattr(ann, n) for n in dir(ann)]
    missing = [c.__name__ for c in classes
               if inspect.isclass(c) and issubclass(c, torch.nn.Module) and not (c.__doc__ or "").strip()]
    assert not missing, f"attnkit.nn classes without a docstring: {missing}"


def test_attention_factory_kwargs_dropout_and_checks():
    layer = ann.Attention(32, 4, mechanism="gla", device="cpu", dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    with pytest.raises(TypeError, match="x has dtype torch.float32 but the layer's parameters are torch.float64"):
        layer(torch.randn(1, 3, 32), causal=True)
    with pytest.raises(ValueError, match="window"):
        ann.Attention(32, 4, mechanism="sliding_window", window=-1)
    with pytest.raises(ValueError, match="dropout"):
        ann.Attention(32, 4, dropout=1.5)
    with pytest.raises(ValueError, match="dropout"):
        ann.Attention(32, 4, mechanism="gla", dropout=0.1)
    drop = ann.Attention(32, 4, dropout=0.5)
    x = torch.randn(1, 8, 32)
    torch.manual_seed(0)
    train = drop(x)
    drop.eval()
    assert not torch.equal(train, drop(x))  # dropout only while training
    assert torch.equal(drop(x), drop(x))
    drop.train()
    out, state = drop(x, causal=True, return_state=True)  # incremental calls drop nothing
    assert out.shape == x.shape and state.length == 8


def test_attention_dropout_p_drops_weights_and_is_refused_without_weights():
    q = torch.randn(1, 2, 16, 8, dtype=torch.float64)
    ones = torch.ones(1, 2, 16, 8, dtype=torch.float64)
    for form in ("sdpa", "reference"):
        torch.manual_seed(0)
        out = attnkit.attention(q, q, ones, "softmax", form=form, dropout_p=0.5)
        # each output row is (kept weights) / (1 - p): its mean over rows is 1 in expectation, rows differ
        assert not torch.allclose(out, ones) and out.min() >= 0
    assert torch.equal(attnkit.attention(q, q, q, dropout_p=0.0), attnkit.attention(q, q, q))
    with pytest.raises(ValueError, match="dropout_p.*chunked"):
        attnkit.attention(q, q, q, "softmax", form="chunked", dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        attnkit.attention(q, q, q, "linear", causal=True, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p must be"):
        attnkit.attention(q, q, q, dropout_p=1.0)


# Every layer exported by attnkit.nn: a small instance, and the same call with its first size made 0.
ALL_LAYERS = {
    "AgentAttention": (ann.AgentAttention, (32, 4, (4, 4)), {"agents": 4}),
    "Attention": (ann.Attention, (32, 4), {}),
    "BiDAFAttention": (ann.BiDAFAttention, (32,), {}),
    "DecoupledCrossAttention": (ann.DecoupledCrossAttention, (ann.Attention(32, 4, context_dim=16), 16), {}),
    "FocusedLinearAttention": (ann.FocusedLinearAttention, (32, 4), {}),
    "GatedPositionalSelfAttention": (ann.GatedPositionalSelfAttention, (32, 4), {}),
    "GlobalLocalCrossAttention": (ann.GlobalLocalCrossAttention, (32, 4), {}),
    "KeyDrivenGQA": (ann.KeyDrivenGQA, (32, 4, 2), {}),
    "LocationSensitiveAttention": (ann.LocationSensitiveAttention, (32, 16, 8), {"kernel_size": 5}),
    "LuongAttention": (ann.LuongAttention, (32,), {}),
    "Mamba2Layer": (ann.Mamba2Layer, (32,), {"head_dim": 16, "state_dim": 8}),
    "RWKV7TimeMix": (ann.RWKV7TimeMix, (32, 4), {"rank": 8}),
    "RWKV6TimeMix": (ann.RWKV6TimeMix, (32, 4), {"rank": 8, "decay_rank": 8}),
    "PaTHAttention": (ann.PaTHAttention, (32, 4), {"rank": 8}),
    "RelationalAttention": (ann.RelationalAttention, (32, 4, 3), {"max_len": 16}),
    "MixtureOfAttentionHeads": (ann.MixtureOfAttentionHeads, (32, 4, 2, 8), {}),
    "MixtureOfHeads": (ann.MixtureOfHeads, (32, 4), {"shared_heads": 1, "active_heads": 2}),
    "MultiHeadLatentAttention": (ann.MultiHeadLatentAttention, (32, 4), {"head_dim": 8, "kv_latent": 16, "rope_dim": 4}),
    "MultiScaleRetention": (ann.MultiScaleRetention, (32, 4), {}),
    "MultiSourceCrossAttention": (ann.MultiSourceCrossAttention, (32, 4, (16, 8)), {}),
    "MultiheadAttention": (ann.MultiheadAttention, (32, 4), {}),
    "NystromAttention": (ann.NystromAttention, (32, 4), {"landmarks": 4}),
    "PairwiseCrossAttention": (ann.PairwiseCrossAttention, (32, 4), {}),
    "PerceiverEncoder": (ann.PerceiverEncoder, (16, 32, 4), {}),
    "PointerAttention": (ann.PointerAttention, (32, 16, 8), {}),
    "PositionalEncodingGenerator": (ann.PositionalEncodingGenerator, (32,), {}),
    "PoolingByMultiheadAttention": (ann.PoolingByMultiheadAttention, (32, 4, 2), {}),
    "ShowAttendTellAttention": (ann.ShowAttendTellAttention, (32, 16, 8), {}),
    "SigmaReparamLinear": (ann.SigmaReparamLinear, (32, 16), {}),
    "SlotAttention": (ann.SlotAttention, (3, 32), {"hidden_dim": 16}),
    "WeightedGQA": (ann.WeightedGQA, (32, 4, 2), {}),
    "HeadEmbeddingAttention": (ann.HeadEmbeddingAttention, (32, 4), {"mode": "add"}),
    "PayBetterAttention": (ann.PayBetterAttention, (32, 4), {"variant": "super", "seq_len": 8}),
    "GaussianAdaptiveAttention": (ann.GaussianAdaptiveAttention, (4, 2), {}),
}


def test_every_exported_layer_is_in_the_table():
    exported = {n for n in dir(ann) if inspect.isclass(getattr(ann, n)) and issubclass(getattr(ann, n), torch.nn.Module)}
    assert exported == set(ALL_LAYERS), f"add these layers to ALL_LAYERS: {sorted(exported - set(ALL_LAYERS))}"


@pytest.mark.parametrize("name", ALL_LAYERS)
def test_every_layer_takes_device_and_dtype_checks_its_sizes_and_pickles(name):
    cls, args, kw = ALL_LAYERS[name]
    params = inspect.signature(cls).parameters
    assert "device" in params and "dtype" in params, f"{name} has no device=/dtype= factory kwargs"
    on_meta = cls(*args, **kw, device="meta")
    given = {id(p) for a in args if isinstance(a, torch.nn.Module) for p in a.parameters()}  # the caller's modules
    own = [p for p in on_meta.parameters() if id(p) not in given]
    assert own and all(p.device.type == "meta" for p in own), f"{name}: a parameter was not made on the device"
    wide = cls(*args, **kw, dtype=torch.float64)
    floats = [t for t in (*wide.parameters(), *wide.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats), f"{name}: dtype= was not applied"
    with pytest.raises(TypeError, match="dtype"):
        cls(*args, **kw, dtype=torch.int64)
    with pytest.raises((ValueError, TypeError), match="device"):
        cls(*args, **kw, device="nosuchdevice")
    first = next(i for i, a in enumerate(args) if isinstance(a, int))
    for bad in (0, -1, 2.5):
        with pytest.raises((ValueError, TypeError)):
            cls(*args[:first], bad, *args[first + 1:], **kw)
    buf = io.BytesIO()
    torch.save(wide, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is cls and loaded.__doc__ and cls.__doc__.strip()
    for (n, a), (_, b) in zip(wide.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), f"{name}: {n} changed in a save/load round trip"
