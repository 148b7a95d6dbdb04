"""Shared pieces of the conformance suite: inputs, sizes, error measures.

The suite is generated from the registry: every registered mechanism is run
through the same checks (forward and gradients of each fast form against the
float64 reference, causality, incremental = one-shot, awkward sizes, bad
inputs). Nothing here knows any particular mechanism.
"""
from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.dispatch import why_not
from attnkit.validation import normalise_mask
from attnkit.registry import PATTERNS, get

# (batch, q_heads, kv_heads, q_len, kv_len, head_dim): the awkward sizes of the issue,
# covered diagonally (seq 1, 7, 63, 129; head_dim 16, 60, 64; GQA ratios 1, 2, 4).
SELF_SIZES = [(2, 2, 2, 1, 1, 16), (1, 4, 2, 7, 7, 60), (1, 4, 1, 63, 63, 64), (2, 2, 2, 129, 129, 16)]
CROSS_SIZES = [(1, 4, 2, 7, 63, 16), (2, 2, 2, 129, 7, 64), (1, 4, 1, 1, 63, 60)]


def all_names() -> list[str]:
    return attnkit.mechanisms()


def sizes_for(pattern: str, spec) -> list[tuple]:
    sizes = CROSS_SIZES if pattern.endswith("cross") else SELF_SIZES
    return sizes


def cases(kind: str) -> list:
    """pytest params: (name, form, pattern) for 'forms', (name, pattern) for 'patterns', names for 'names'."""
    out = []
    for name in all_names():
        spec = get(name)
        if kind == "names":
            out.append(name)
            continue
        for pattern in PATTERNS:
            if pattern not in spec.patterns:
                continue
            if kind == "patterns":
                out.append((name, pattern))
            else:
                out.extend((name, form, pattern) for form in spec.fast)
    return out


def make_inputs(spec, size, dtype=torch.float64, seed=0):
    """q, k, v and the mechanism's extra tensors, in float64 then cast to ``dtype``."""
    B, H, Hkv, Nq, Nk, D = size
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64)
    extra = spec.tensor_inputs(q, k, v, g) if spec.tensor_inputs is not None else {}
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return cast(q), cast(k), cast(v), {n: cast(t) for n, t in extra.items()}


def run(spec, form, q, k, v, extra, *, causal, mask=None, **kw):
    """``attnkit.attention`` with the spec's test params; skips the test when ``form`` cannot run the call."""
    if form not in (None, "reference"):
        params = {**spec.defaults, **spec.test_params, **extra, **kw}
        reason = why_not(spec, form, q, k, v, causal=causal, mask=normalise_mask(mask, q, k), params=params)
        if reason is not None:
            pytest.skip(f"{spec.name}/{form} does not run this call: {reason}")
    return attnkit.attention(
        q, k, v, spec.name, causal=causal, mask=mask, form=form, **spec.test_params, **extra, **kw
    )


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_reference(fast32, ref32, ref64, what: str) -> None:
    """error(fast fp32 vs fp64) <= 10 * error(reference fp32 vs fp64) + 1e-6."""
    err_fast, err_ref = max_err(fast32, ref64), max_err(ref32, ref64)
    assert torch.isfinite(fast32).all(), f"{what}: non-finite values"
    assert err_fast <= 10 * err_ref + 1e-6, f"{what}: fast error {err_fast:.3e} > 10 x reference error {err_ref:.3e} + 1e-6"


def grad_inputs(q, k, v, extra):
    """Inputs of a gradient check: q, k, v and every tensor input; the floating ones become leaves."""
    leaves = {"q": q, "k": k, "v": v, **extra}
    return {n: t.detach().clone().requires_grad_(True) if t.is_floating_point() else t for n, t in leaves.items()}


def gradients(spec, form, leaves, *, causal, cotangent_seed=1):
    extra = {n: t for n, t in leaves.items() if n not in ("q", "k", "v")}
    out = run(spec, form, leaves["q"], leaves["k"], leaves["v"], extra, causal=causal)
    g = torch.Generator().manual_seed(cotangent_seed)
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    names = [n for n, t in leaves.items() if t.is_floating_point()]  # integer/boolean inputs have no gradient
    grads = torch.autograd.grad((out * cot).sum(), [leaves[n] for n in names], allow_unused=True)
    return {n: (gr if gr is not None else torch.zeros_like(leaves[n])) for n, gr in zip(names, grads)}
