"""LASP-2 on 2 and 4 gloo processes equals single-process attnkit.attention for every linear-family mechanism."""
import pytest
import torch

import attnkit
from attnkit import registry
from attnkit.distributed import Sharding, lasp2_attention

from .spawn import run

B, H, HKV, N, D = 1, 4, 2, 32, 8
TOL = 1e-5
MECHANISMS = sorted(n for n in registry.names() if "recurrence" in registry.get(n).extra)


def _cases():
    g = torch.Generator().manual_seed(0)
    for name in MECHANISMS:
        spec = registry.get(name)
        for causal in (True, False):
            if ("causal-self" if causal else "noncausal-self") not in spec.patterns:
                continue
            q = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
            k = torch.randn(B, HKV, N, D, generator=g, dtype=torch.float64)
            v = torch.randn(B, HKV, N, D, generator=g, dtype=torch.float64)
            if name in ("linear", "flatten", "lln", "based"):  # positive features keep the normaliser away from 0
                q, k = q.abs(), k.abs()
            extra = spec.tensor_inputs(q, k, v, g) if spec.tensor_inputs else {}
            q, k, v = (t.float() for t in (q, k, v))
            extra = {n: t.float() if t.is_floating_point() else t for n, t in extra.items()}
            params = {"chunk_size": 8, **{n: p for n, p in spec.test_params.items() if n != "chunk_size"}}
            yield name, causal, q, k, v, extra, params, torch.randn(B, H, N, D, generator=g)


def _single(name, causal, q, k, v, extra, params, dout):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = attnkit.attention(q, k, v, name, causal=causal, **extra, **params)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.fixture(scope="module")
def expected():
    return [_single(*case) for case in _cases()]


def _every_mechanism(rank, world, expected):
    sh = Sharding(N, layout="contiguous")
    for (name, causal, q, k, v, extra, params, dout), want in zip(_cases(), expected):
        ql, kl, vl = (sh.shard(t).requires_grad_() for t in (q, k, v))
        # per-token inputs (GLA's gk, Mamba-2's dt) are cut like q: their sequence dimension is 2 too
        local = {n: (sh.shard(t, dim=2) if n in registry.get(name).tensor_inputs_per_token else t)
                 for n, t in extra.items()}
        out = lasp2_attention(ql, kl, vl, name, causal=causal, **local, **params)
        out.backward(sh.shard(dout))
        got = [sh.gather(t) for t in (out.detach(), ql.grad, kl.grad, vl.grad)]
        if rank == 0:
            for part, a, b in zip(("out", "dq", "dk", "dv"), got, want):
                err = (a - b).abs().max().item()
                assert err <= TOL, f"{name} causal={causal} on {world} ranks: {part} differs by {err:.2e}"


@pytest.mark.parametrize("world", [2, 4])
def test_lasp2_matches_single_process(world, expected):
    run(world, _every_mechanism, expected)


def _refused(rank, world):
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="diagonal state recurrence"):
        lasp2_attention(q, q, q, "softmax")
    with pytest.raises(ValueError, match="only defined causally"):
        lasp2_attention(q, q, q, "retention", causal=False)


def test_lasp2_refuses_mechanisms_without_the_recurrence():
    run(2, _refused)
