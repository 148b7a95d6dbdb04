"""Log-linear Gated DeltaNet: the Fenwick levels of the gated delta rule, checked against its equations."""
from __future__ import annotations

import pytest
import torch

from attnkit.nn.inputs import input_module
import torch.nn.functional as F

import attnkit
from attnkit.families.log_linear import levels_for
from attnkit.state import RecurrentState

NAME = "log_linear_gated_deltanet"
FORMS = attnkit.spec(NAME).stateful_forms


def _inputs(B, H, N, D, levels, seed=0):
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D)
    extra = {"beta": torch.sigmoid(randn(B, H, N)), "g": 0.5 * F.logsigmoid(randn(B, H, N) + 1),
             "lam": F.softplus(randn(B, H, N, levels))}
    return q, k, v, extra


@pytest.mark.parametrize("form", ["reference", "chunked", "recurrent"])
def test_equal_level_weights_are_gated_deltanet(form):
    q, k, v, extra = _inputs(2, 2, 21, 8, levels_for(21))
    lam = torch.ones_like(extra.pop("lam"))
    out = attnkit.attention(q, k, v, NAME, causal=True, lam=lam, chunk_size=4, form=form, **extra)
    expected = attnkit.attention(q, k, v, "gated_deltanet", causal=True, form="reference", **extra)
    torch.testing.assert_close(out, expected)


def _direct(q, k, v, beta, g, lam, scale):
    """``o_t = sum_{s <= t} lam[t, bit_length(t ^ s)] beta_s q_t^T A_t ... A_{s+1} k_s v_s`` and the
    final per-level states, pair by pair, with ``A_t = exp(g_t) (I - beta_t k_t k_t^T)``."""
    q, k = F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1)
    B, H, N, D = q.shape
    out = torch.zeros_like(v)
    S = torch.zeros(B, H, lam.shape[-1], D, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            A = [g[b, h, t].exp() * (torch.eye(D, dtype=q.dtype) - beta[b, h, t] * torch.outer(k[b, h, t], k[b, h, t]))
                 for t in range(N)]
            for s in range(N):
                carried = beta[b, h, s] * k[b, h, s]  # A_t ... A_{s+1} beta_s k_s, from t = s on
                for t in range(s, N):
                    if t > s:
                        carried = A[t] @ carried
                    out[b, h, t] += lam[b, h, t, (t ^ s).bit_length()] * (q[b, h, t] @ carried) * v[b, h, s]
                S[b, h, ((N - 1) ^ s).bit_length()] += torch.outer(carried, v[b, h, s])
    return out, S


def test_parallel_form_is_the_sum_over_pairs():
    """The whole sequence summed pair by pair; the reference runs it in two calls, the second
    starting at position 7 from the first one's per-level state."""
    B, H, N, D, cut, scale = 1, 2, 20, 4, 7, 0.5
    q, k, v, extra = _inputs(B, H, N, D, levels_for(N))
    expected, expected_S = _direct(q, k, v, scale=scale, **extra)
    first = {n: t[:, :, :cut] for n, t in extra.items()}
    rest = {n: t[:, :, cut:] for n, t in extra.items()}
    out1, state = FORMS["parallel"](q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], causal=True, scale=scale, **first)
    out2, final = FORMS["parallel"](q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], causal=True, scale=scale,
                                    initial_state=state, **rest)
    torch.testing.assert_close(torch.cat([out1, out2], dim=2), expected)
    torch.testing.assert_close(final["S"], expected_S)
    assert final.length == N


def _run(form, leaves, start, chunk_size):
    q, k, v, S0 = (leaves[n] for n in ("q", "k", "v", "S0"))
    extra = {n: leaves[n] for n in ("beta", "g", "lam")}
    out, final = FORMS[form](q, k, v, causal=True, scale=0.4, initial_state=RecurrentState(start, S=S0),
                             chunk_size=chunk_size, **extra)
    g = torch.Generator().manual_seed(3)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (final["S"] * torch.randn(final["S"].shape, generator=g, dtype=out.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, final["S"], dict(zip(leaves, grads))


@pytest.mark.parametrize("start,N,chunk_size", [(11, 37, 8), (5, 2, 8), (16, 40, 4), (3, 70, 32)])
def test_chunked_recurrent_and_parallel_agree(start, N, chunk_size):
    """Output, final per-level state and every gradient (initial state included), from a start
    position inside a chunk and a random initial state at every level."""
    B, H, D = 2, 2, 8
    levels = levels_for(start + N)
    q, k, v, extra = _inputs(B, H, N, D, levels, seed=1)
    S0 = torch.randn(B, H, levels, D, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    leaves = {n: t.clone().requires_grad_(True) for n, t in {"q": q, "k": k, "v": v, "S0": S0, **extra}.items()}
    out, S, grads = _run("parallel", leaves, start, chunk_size)
    for form in ("chunked", "recurrent"):
        out_f, S_f, grads_f = _run(form, leaves, start, chunk_size)
        torch.testing.assert_close(out_f, out, msg=lambda m: f"{form} output: {m}")
        torch.testing.assert_close(S_f, S, msg=lambda m: f"{form} final state: {m}")
        for n in leaves:
            torch.testing.assert_close(grads_f[n], grads[n], msg=lambda m: f"{form} gradient of {n}: {m}")


BAD = [  # (the argument the error must name, the good keyword arguments changed)
    ("beta", lambda kw: {**kw, "beta": None}),
    ("beta", lambda kw: {**kw, "beta": kw["beta"][:, :, :-1]}),
    ("g", lambda kw: {**kw, "g": None}),
    ("g", lambda kw: {**kw, "g": kw["g"][..., None]}),
    ("lam", lambda kw: {**kw, "lam": None}),
    ("lam", lambda kw: {**kw, "lam": kw["lam"][..., 0]}),
    ("lam", lambda kw: {**kw, "lam": kw["lam"][..., :2]}),  # too few levels for position N - 1
    ("chunk_size", lambda kw: {**kw, "chunk_size": 12}),
    ("initial_state", lambda kw: {**kw, "initial_state": RecurrentState(4, S=torch.zeros(1, 2, 4, 5, 4))}),
    ("causal", lambda kw: {**kw, "causal": False}),
]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("name,change", BAD)
def test_bad_inputs_name_the_argument(form, name, change):
    q, k, v, extra = _inputs(1, 2, 9, 4, levels_for(9))
    with pytest.raises(ValueError, match=name):
        FORMS[form](q, k, v, scale=1.0, **change({"causal": True, **extra}))


def test_module_computes_inputs():
    layer = input_module(NAME, dim=16, heads=2, kv_heads=2, head_dim=8)
    q = torch.randn(1, 2, 9, 8)
    inputs = layer(torch.randn(1, 9, 16), q, q, q)
    assert set(inputs) == {"beta", "g", "lam"}
    assert ((inputs["beta"] > 0) & (inputs["beta"] < 1)).all() and (inputs["g"] <= 0).all()
    assert (inputs["lam"] >= 0).all() and inputs["lam"].shape == (1, 2, 9, 32)
    attnkit.attention(q, q, q, NAME, causal=True, **inputs).sum().backward()
    assert layer.lam.proj.weight.grad is not None and layer.lam.scale.grad is not None
    assert layer.beta.weight.grad is not None
    # the authors' lam: softplus(L * W x), divided by the attention scale 8 ** -0.5 (SCALE_LAMBDA)
    with torch.no_grad():
        layer.lam.scale.uniform_(0.5, 2.0)
        x = torch.randn(1, 9, 16)
        dl = (x @ layer.lam.proj.weight.T).reshape(1, 9, 2, 32)
        expected = torch.nn.functional.softplus(layer.lam.scale * dl).transpose(1, 2) * 8**0.5
        assert torch.allclose(layer(x, q, q, q)["lam"], expected, atol=1e-6)
