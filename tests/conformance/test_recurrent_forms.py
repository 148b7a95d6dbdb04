"""Recurrent mechanisms: the parallel form and every other stateful form (chunked, recurrent, ...) are one function.

Generated for every spec with ``stateful_forms``: each form in fp32 against
the float64 parallel form (``err <= 10 err(parallel fp32) + 1e-6``) in the output,
the final state, and the gradients of q, k, v, every floating tensor input and the
initial state; causal and, where declared, non-causal self and cross; with and
without an initial state; and the state handed across incremental API calls.
"""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.state import RecurrentState
from attnkit.registry import get

from .harness import all_names, assert_close_to_reference, make_inputs, max_err

PREFIX, N, SCALE = 11, 37, 0.3
STATE_PATTERNS = ("causal-self", "noncausal-self", "noncausal-cross")


def _stateful():
    return [n for n in all_names() if get(n).stateful_forms is not None]


def _cases():
    return [
        (name, pattern, initial)
        for name in _stateful()
        for pattern in STATE_PATTERNS
        if pattern in get(name).patterns
        for initial in (False, True)
    ]


def _split(spec, extra, a, b):
    return {n: (t[:, :, a:b] if n in spec.tensor_inputs_per_token else t) for n, t in extra.items()}


def _call(spec, form, q, k, v, extra, *, causal, initial):
    params = {**spec.defaults, **spec.test_params, **extra}
    return spec.stateful_forms[form](q, k, v, causal=causal, scale=SCALE, initial_state=initial, **params)


def _problem(spec, pattern):
    """A prefix (to make an initial state) and the main piece, in float64."""
    q, k, v, extra = make_inputs(spec, (2, 4, 2, PREFIX + N, PREFIX + N, 16), seed=7)
    pre = (q[:, :, :PREFIX], k[:, :, :PREFIX], v[:, :, :PREFIX], _split(spec, extra, 0, PREFIX))
    q_main = q[:, :, PREFIX:]
    if pattern == "noncausal-cross":
        q_main = q_main[:, :, :23]
    main = (q_main, k[:, :, PREFIX:], v[:, :, PREFIX:], _split(spec, extra, PREFIX, PREFIX + N))
    return pre, main


def _outputs_and_grads(spec, form, main, state, dtype, causal):
    """Output, final state tensors, and gradients of a fixed random loss over both."""
    q, k, v, extra = main
    leaves = {"q": q, "k": k, "v": v, **{n: t for n, t in extra.items() if t.is_floating_point()}}
    if state is not None:
        leaves.update({f"initial_state[{n}]": t for n, t in state.tensors().items()})
    leaves = {n: t.detach().to(dtype).requires_grad_(True) for n, t in leaves.items()}
    extra_in = {n: leaves.get(n, t) for n, t in extra.items()}
    initial = None
    if state is not None:
        initial = RecurrentState(state.length, **{n: leaves[f"initial_state[{n}]"] for n in state.tensors()})
    out, final = _call(spec, form, leaves["q"], leaves["k"], leaves["v"], extra_in, causal=causal, initial=initial)
    g = torch.Generator().manual_seed(11)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
    for t in final.tensors().values():
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = {n: (gr if gr is not None else torch.zeros_like(leaves[n])) for n, gr in zip(leaves, grads)}
    return out.detach(), {n: t.detach() for n, t in final.tensors().items()}, grads


@pytest.mark.parametrize("name,pattern,initial", _cases())
def test_stateful_forms_agree(name, pattern, initial):
    spec = get(name)
    causal = pattern.startswith("causal")
    pre, main = _problem(spec, pattern)
    state = None
    if initial:
        with torch.no_grad():
            _, state = _call(spec, "parallel", *pre[:3], pre[3], causal=True if causal else False, initial=None)
    ref64 = _outputs_and_grads(spec, "parallel", main, state, torch.float64, causal)
    ref32 = _outputs_and_grads(spec, "parallel", main, state, torch.float32, causal)
    for form in (f for f in spec.stateful_forms if f != "parallel"):
        got = _outputs_and_grads(spec, form, main, state, torch.float32, causal)
        what = f"{name}/{form} {pattern} initial_state={initial}"
        assert_close_to_reference(got[0], ref32[0], ref64[0], f"{what}: output")
        for n in ref64[1]:
            assert_close_to_reference(got[1][n], ref32[1][n], ref64[1][n], f"{what}: final state {n}")
        for n in ref64[2]:
            assert_close_to_reference(got[2][n], ref32[2][n], ref64[2][n], f"{what}: d{n}")


@pytest.mark.parametrize("name", [n for n in _stateful() if "causal-self" in get(n).patterns])
def test_state_handed_across_incremental_calls(name):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, (2, 4, 2, N, N, 16), seed=9)
    _, whole = _call(spec, "parallel", q, k, v, extra, causal=True, initial=None)
    state = None
    for a, b in ((0, 13), (13, 14), (14, N)):
        _, state = attnkit.attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], name, causal=True, scale=SCALE, state=state,
            return_state=True, **spec.test_params, **_split(spec, extra, a, b),
        )
    assert state.length == N
    for n, t in whole.tensors().items():
        assert max_err(state[n], t) < 1e-9, f"{name}: state {n} after incremental calls differs from one call"
    assert state.numel() == spec.state_size(2, 4, 2, N, 16), f"{name}: spec.state_size disagrees with the state"


@pytest.mark.parametrize("name", [n for n in _stateful() if "causal-self" in get(n).patterns])
def test_state_of_another_shape_is_refused(name):
    spec = get(name)
    q, k, v, extra = make_inputs(spec, (1, 2, 2, 5, 5, 16), seed=1)
    _, state = attnkit.attention(q, k, v, name, causal=True, return_state=True, **extra)
    q2, k2, v2, extra2 = make_inputs(spec, (1, 4, 4, 5, 5, 16), seed=1)
    with pytest.raises(ValueError, match=r"^state\b"):  # the argument the caller wrote
        attnkit.attention(q2, k2, v2, name, causal=True, state=state, return_state=True, **extra2)
