"""Every q/k positional encoding of ``attnkit.positional.ENCODINGS`` composed with
softmax attention (SDPA and chunked forms): forward against the float64
reference, causality, and incremental = one-shot (positions must continue)."""
from __future__ import annotations

import random

import pytest
import torch

import attnkit
from attnkit.positional import ENCODINGS, encoding
from attnkit.registry import get

from .harness import assert_close_to_reference, make_inputs, max_err

FORMS = ("sdpa", "chunked")
CASES = [(e, f) for e in sorted(ENCODINGS) for f in FORMS]
CHUNKS = get("softmax").test_params


def _run(q, k, v, enc, form, causal, **kw):
    return attnkit.attention(q, k, v, "softmax", causal=causal, form=form, position=enc, **CHUNKS, **kw)


@pytest.mark.parametrize("name,form", CASES)
def test_forward_matches_reference_with_encoding(name, form):
    spec = get("softmax")
    for seed, (size, causal) in enumerate([((2, 4, 2, 37, 37, 16), True), ((1, 4, 2, 7, 63, 16), False)]):
        enc = encoding(name, size[5])
        q, k, v, _ = make_inputs(spec, size, seed=seed)
        ref64 = _run(q, k, v, enc, "reference", causal)
        q32, k32, v32 = q.float(), k.float(), v.float()
        ref32 = _run(q32, k32, v32, enc, "reference", causal)
        fast32 = _run(q32, k32, v32, enc, form, causal)
        assert_close_to_reference(fast32, ref32, ref64, f"softmax/{form} + {name} {size}")


@pytest.mark.parametrize("name,form", CASES)
def test_encoding_keeps_causality(name, form):
    q, k, v, _ = make_inputs(get("softmax"), (1, 4, 2, 37, 37, 16), seed=3)
    enc, t = encoding(name, 16), 20
    base = _run(q, k, v, enc, form, True)
    g = torch.Generator().manual_seed(4)

    def perturb(x):
        x = x.clone()
        x[:, :, t + 1 :] = torch.randn(x[:, :, t + 1 :].shape, generator=g, dtype=x.dtype)
        return x

    out = _run(perturb(q), perturb(k), perturb(v), enc, form, True)
    assert max_err(out[:, :, : t + 1], base[:, :, : t + 1]) < 1e-9, f"{name}/{form}: future leaked into the past"
    assert max_err(out[:, :, t + 1 :], base[:, :, t + 1 :]) > 1e-6


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_incremental_with_encoding_equals_one_shot(name):
    N = 37
    q, k, v, _ = make_inputs(get("softmax"), (2, 4, 2, N, N, 16), seed=5)
    enc = encoding(name, 16)
    whole = _run(q, k, v, enc, None, True)
    rng = random.Random(name)
    for cuts in (sorted(rng.sample(range(1, N), 4)), list(range(1, N))):
        state, outs = None, []
        for a, b in zip([0, *cuts], [*cuts, N]):
            out, state = attnkit.attention(
                q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], "softmax", causal=True, position=enc,
                state=state, return_state=True, **CHUNKS,
            )
            outs.append(out)
        err = max_err(torch.cat(outs, dim=2), whole)
        assert err < 1e-9, f"{name}: incremental differs from one-shot by {err:.3e}"
