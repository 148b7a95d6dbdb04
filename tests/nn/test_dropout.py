"""``dropout=`` on every layer with attention weights, with nn.Attention's meaning: dropped while training only."""
from __future__ import annotations

import inspect

import pytest
import torch

import attnkit.nn as ann


def _t(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


# name: (a layer with dropout=p, a call on it returning one tensor)
LAYERS = {
    "Attention": (lambda p: ann.Attention(32, 4, dropout=p), lambda m: m(_t(2, 6, 32))),
    "MultiheadAttention": (lambda p: ann.MultiheadAttention(32, 4, dropout=p, batch_first=True),
                           lambda m: m(_t(2, 6, 32), _t(2, 6, 32), _t(2, 6, 32), need_weights=False)[0]),
    "AgentAttention": (lambda p: ann.AgentAttention(32, 4, (4, 4), agents=4, dropout=p), lambda m: m(_t(2, 16, 32))),
    "BiDAFAttention": (lambda p: ann.BiDAFAttention(32, dropout=p), lambda m: m(_t(2, 5, 32), _t(2, 4, 32))[0]),
    "DecoupledCrossAttention": (lambda p: ann.DecoupledCrossAttention(ann.Attention(32, 4, context_dim=16, dropout=p), 16),
                                lambda m: m(_t(2, 6, 32), _t(2, 5, 16), _t(2, 3, 16))),
    "GatedPositionalSelfAttention": (lambda p: ann.GatedPositionalSelfAttention(32, 4, dropout=p),
                                     lambda m: m(_t(2, 16, 32), (4, 4))),
    "GlobalLocalCrossAttention": (lambda p: ann.GlobalLocalCrossAttention(32, 4, ratio=0.5, dropout=p),
                                  lambda m: m(_t(2, 9, 32), _t(2, 9, 9))[0]),
    "PairwiseCrossAttention": (lambda p: ann.PairwiseCrossAttention(32, 4, dropout=p), lambda m: m(_t(2, 6, 32))),
    "KeyDrivenGQA": (lambda p: ann.KeyDrivenGQA(32, 4, 2, dropout=p), lambda m: m(_t(2, 6, 32))),
    "WeightedGQA": (lambda p: ann.WeightedGQA(32, 4, 2, dropout=p), lambda m: m(_t(2, 6, 32))),
    "HeadEmbeddingAttention": (lambda p: ann.HeadEmbeddingAttention(32, 4, dropout=p), lambda m: m(_t(2, 6, 32))),
    "PayBetterAttention": (lambda p: ann.PayBetterAttention(32, 4, variant="super", seq_len=8, dropout=p),
                           lambda m: m(_t(2, 6, 32))),
    "MixtureOfHeads": (lambda p: ann.MixtureOfHeads(32, 4, shared_heads=1, active_heads=2, dropout=p),
                       lambda m: m(_t(2, 6, 32))),
    "LocationSensitiveAttention": (lambda p: ann.LocationSensitiveAttention(32, 16, 8, kernel_size=5, dropout=p),
                                   lambda m: m(_t(2, 32), _t(2, 7, 16), _t(2, 7).softmax(-1))[0]),
    "LuongAttention": (lambda p: ann.LuongAttention(32, dropout=p), lambda m: m(_t(2, 3, 32), _t(2, 5, 32))[0]),
    "ShowAttendTellAttention": (lambda p: ann.ShowAttendTellAttention(32, 16, 8, dropout=p),
                                lambda m: m(_t(2, 6, 32), _t(2, 16))[0]),
    "MixtureOfAttentionHeads": (lambda p: ann.MixtureOfAttentionHeads(32, 4, 2, 8, dropout=p), lambda m: m(_t(2, 6, 32))),
    "MultiHeadLatentAttention": (lambda p: ann.MultiHeadLatentAttention(32, 4, head_dim=8, kv_latent=16, rope_dim=4,
                                                                        dropout=p), lambda m: m(_t(2, 6, 32))),
    "MultiSourceCrossAttention": (lambda p: ann.MultiSourceCrossAttention(32, 4, (16, 8), dropout=p),
                                  lambda m: m(_t(2, 6, 32), [_t(2, 5, 16), _t(2, 4, 8)])),
    "MultiSourceCrossAttention-flat": (lambda p: ann.MultiSourceCrossAttention(32, 4, (16, 8), strategy="flat", dropout=p),
                                       lambda m: m(_t(2, 6, 32), [_t(2, 5, 16), _t(2, 4, 8)])),
    "PoolingByMultiheadAttention": (lambda p: ann.PoolingByMultiheadAttention(32, 4, 2, dropout=p),
                                    lambda m: m(_t(2, 6, 32))),
    "PerceiverEncoder": (lambda p: ann.PerceiverEncoder(16, 32, 4, latent_layers=1, dropout=p), lambda m: m(_t(2, 6, 16))),
    "SlotAttention": (lambda p: ann.SlotAttention(3, 32, hidden_dim=16, dropout=p),
                      lambda m: m(_t(2, 6, 32), _t(2, 3, 32))),
}


def _pair(name, p):
    """The layer with ``dropout=p`` and the same layer (same weights) with ``dropout=0``."""
    make, _ = LAYERS[name]
    torch.manual_seed(0)
    layer = make(p)
    plain = make(0.0)
    plain.load_state_dict(layer.state_dict())
    return layer, plain


@pytest.mark.parametrize("name", LAYERS)
def test_dropout_drops_weights_while_training_only(name):
    _, call = LAYERS[name]
    layer, plain = _pair(name, 0.5)
    layer.eval(), plain.eval()
    out = call(layer)
    assert torch.equal(out, call(layer)), f"{name}: eval mode is not deterministic"
    assert torch.equal(out, call(plain)), f"{name}: eval mode differs from dropout=0"
    layer.train(), plain.train()
    torch.manual_seed(1)
    assert not torch.allclose(call(layer), call(plain)), f"{name}: dropout=0.5 drops nothing while training"
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout"):
            LAYERS[name][0](bad)


def _declares_dropout(cls) -> bool:
    params = inspect.signature(cls).parameters
    forwards_to_attention = issubclass(cls, ann.Attention) and any(p.kind is p.VAR_KEYWORD for p in params.values())
    return "dropout" in params or forwards_to_attention


def test_every_layer_takes_dropout_or_says_why_not():
    layers = {n: getattr(ann, n) for n in dir(ann)
              if inspect.isclass(getattr(ann, n)) and issubclass(getattr(ann, n), torch.nn.Module)}
    tested = {n.split("-")[0] for n in LAYERS}
    untested = sorted(n for n, cls in layers.items() if _declares_dropout(cls) and n not in tested)
    assert not untested, f"layers that take dropout= but are not in LAYERS: {untested}"
    silent = sorted(n for n, cls in layers.items() if n not in tested and "dropout" not in (cls.__doc__ or ""))
    assert not silent, f"layers without dropout= whose docstring does not say why: {silent}"
