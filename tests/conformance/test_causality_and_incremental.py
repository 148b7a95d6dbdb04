"""Causality (the future never changes the past) and incremental = one-shot."""
from __future__ import annotations

import random

import pytest
import torch

import attnkit
from attnkit.registry import get

from .harness import cases, make_inputs, max_err, run

CAUSAL_SIZE = (1, 4, 2, 37, 37, 16)


def _causal_cases():
    return [(n, f, p) for n, f, p in cases("forms") if p == "causal-self"] + [
        (n, "reference", "causal-self") for n in cases("names") if "causal-self" in get(n).patterns
    ]


@pytest.mark.parametrize("name,form,pattern", _causal_cases())
def test_future_inputs_do_not_change_past_outputs(name, form, pattern):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, CAUSAL_SIZE, seed=3)
    base = run(spec, form, q, k, v, extra, causal=True)
    t = 20
    g = torch.Generator().manual_seed(4)

    def perturb(x):
        x = x.clone()
        x[:, :, t + 1 :] = torch.randn(x[:, :, t + 1 :].shape, generator=g, dtype=x.dtype)
        return x

    extra2 = {n: (perturb(x) if n in spec.tensor_inputs_per_token else x) for n, x in extra.items()}
    if spec.selection_reads_whole_prompt:
        # A prefill estimator chooses its layout from the whole prompt's q and k (later tokens change which
        # earlier keys a query keeps); what must hold is that no query reads a later key: later values are unseen.
        out = run(spec, form, q, k, perturb(v), extra, causal=True)
    else:
        out = run(spec, form, perturb(q), perturb(k), perturb(v), extra2, causal=True)
    assert max_err(out[:, :, : t + 1], base[:, :, : t + 1]) < 1e-9, f"{name}/{form}: future tokens leaked into the past"
    assert max_err(out[:, :, t + 1 :], base[:, :, t + 1 :]) > 1e-6, f"{name}/{form}: output ignores its inputs"


def _incremental_names():
    return [n for n in cases("names") if get(n).step is not None]


@pytest.mark.parametrize("name", _incremental_names())
def test_incremental_equals_one_shot(name):
    spec = get(name)
    N = 37
    q, k, v, extra = make_inputs(spec, (2, 4, 2, N, N, 16), seed=5)
    whole = run(spec, None, q, k, v, extra, causal=True)
    rng = random.Random(name)
    splits = [sorted(rng.sample(range(1, N), 4)), list(range(1, N))]  # random pieces, then one token at a time
    for cuts in splits:
        state, outs = None, []
        for a, b in zip([0, *cuts], [*cuts, N]):
            piece = {n: (x[:, :, a:b] if n in spec.tensor_inputs_per_token else x) for n, x in extra.items()}
            out, state = attnkit.attention(
                q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], name, causal=True, state=state, return_state=True,
                **spec.test_params, **piece,
            )
            outs.append(out)
        assert state.length == N
        err = max_err(torch.cat(outs, dim=2), whole)
        assert err < 1e-9, f"{name}: incremental differs from one-shot by {err:.3e} (cuts {cuts[:6]}...)"


@pytest.mark.parametrize("name", _incremental_names())
def test_a_state_is_a_value_continuing_twice_from_it_gives_the_same_answer(name):
    """Beam search, retries and speculative decoding continue from one state more than once."""
    spec = get(name)
    N, cut, end = 24, 10, 14
    q, k, v, extra = make_inputs(spec, (1, 2, 2, N, N, 16), seed=6)
    whole = run(spec, None, q, k, v, extra, causal=True)

    def call(a, b, state):
        piece = {n: (x[:, :, a:b] if n in spec.tensor_inputs_per_token else x) for n, x in extra.items()}
        return attnkit.attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], name, causal=True, state=state,
                                 return_state=True, **spec.test_params, **piece)

    _, state = call(0, cut, None)
    for attempt in ("first", "second"):
        out, newer = call(cut, end, state)
        assert state.length == cut and newer.length == end
        err = max_err(out, whole[:, :, cut:end])
        assert err < 1e-9, f"{name}: the {attempt} continuation from one state differs from one-shot by {err:.3e}"
    out, _ = call(end, N, newer)  # the newest state still continues
    assert max_err(out, whole[:, :, end:]) < 1e-9, f"{name}: continuing the newest state after a branch is wrong"


@pytest.mark.parametrize("name", _incremental_names())
def test_declared_state_size_is_what_the_state_holds(name):
    """spec.state_size after N tokens equals the state's numel, for pieces and for one token at a time."""
    spec = get(name)
    B, H, Hkv, N, D = 2, 4, 2, 37, 16
    q, k, v, extra = make_inputs(spec, (B, H, Hkv, N, N, D), seed=7)
    for cuts in ([5, 17, 30], list(range(1, N))):
        state = None
        for a, b in zip([0, *cuts], [*cuts, N]):
            piece = {n: (x[:, :, a:b] if n in spec.tensor_inputs_per_token else x) for n, x in extra.items()}
            _, state = attnkit.attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], name, causal=True, state=state,
                                         return_state=True, **spec.test_params, **piece)
            declared = spec.state_size(B, H, Hkv, b, D, v.shape[-1], **{**spec.defaults, **spec.test_params, **extra})
            assert state.numel() == declared, f"{name} after {b} tokens: state holds {state.numel()}, declared {declared}"


@pytest.mark.parametrize("name", [n for n in cases("names") if get(n).step is None])
def test_mechanism_without_incremental_form_refuses_state(name):
    spec = get(name)
    pattern = "causal-self" if "causal-self" in spec.patterns else sorted(spec.patterns)[0]
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 8, 8, 16))
    with pytest.raises(ValueError, match="incremental"):
        attnkit.attention(q, k, v, name, causal=pattern.startswith("causal"), return_state=True, **extra)
