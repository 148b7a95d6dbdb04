"""Every strategy on 2 and 4 gloo processes equals single-process attnkit.attention, outputs and gradients."""
import pytest
import torch

import attnkit
from attnkit.distributed import Sharding, burst_attention, ring_attention, ulysses_attention

from .spawn import run

B, H, HKV, N, D, DV = 2, 4, 2, 32, 8, 6
TOL = 1e-5


def _inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, N, D, generator=g)
    k = torch.randn(B, HKV, N, D, generator=g)
    v = torch.randn(B, HKV, N, DV, generator=g)
    dout = torch.randn(B, H, N, DV, generator=g)
    doc_ids = torch.tensor([[0] * 5 + [1] * 12 + [2] * 15, [0] * 20 + [1] * 3 + [2] * 9])
    return q, k, v, dout, doc_ids


def _single(q, k, v, dout, mechanism, causal, **params):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = attnkit.attention(q, k, v, mechanism, causal=causal, **params)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _sharded(sh, fn, q, k, v, dout):
    ql, kl, vl = (sh.shard(t).requires_grad_() for t in (q, k, v))
    out = fn(ql, kl, vl)
    out.backward(sh.shard(dout))
    return [sh.gather(t) for t in (out.detach(), ql.grad, kl.grad, vl.grad)]


def _compare(case, got, want):
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        err = (a - b).abs().max().item()
        assert err <= TOL, f"{case}: {name} differs from single-process attention by {err:.2e}"


def _cases(q, k, v, doc_ids):
    """(name, single-process mechanism and params, distributed call) for every strategy and mask."""
    for causal in (False, True):
        masks = [("none", "softmax", {}, {}),
                 ("documents", "document", {"doc_ids": doc_ids}, {"doc_ids": doc_ids}),
                 ("window", "sliding_window", {"window": 5, "border": "clamp"}, {"window": 5})]
        for mask_name, mechanism, params, ring_params in masks:
            for layout in ("zigzag", "contiguous"):
                def ring(ql, kl, vl, layout=layout, causal=causal, ring_params=ring_params):
                    return ring_attention(ql, kl, vl, layout=layout, causal=causal, **ring_params)

                yield f"ring {layout} causal={causal} {mask_name}", layout, (mechanism, causal, params), ring

            def burst(ql, kl, vl, causal=causal, ring_params=ring_params):
                return burst_attention(ql, kl, vl, causal=causal, tile_q=3, tile_k=5, **ring_params)

            yield f"burst zigzag causal={causal} {mask_name}", "zigzag", (mechanism, causal, params), burst

            def ulysses(ql, kl, vl, causal=causal, mechanism=mechanism, params=params):
                return ulysses_attention(ql, kl, vl, mechanism, causal=causal, layout="zigzag", **params)

            yield f"ulysses causal={causal} {mask_name}", "zigzag", (mechanism, causal, params), ulysses


def _every_strategy(rank, world, expected):
    torch.manual_seed(rank)  # shards must not depend on each rank's own random state
    q, k, v, dout, doc_ids = _inputs()
    for (case, layout, _, fn), want in zip(_cases(q, k, v, doc_ids), expected):
        got = _sharded(Sharding(N, layout=layout), fn, q, k, v, dout)
        if rank == 0:
            _compare(f"{case} on {world} ranks", got, want)


@pytest.fixture(scope="module")
def expected():
    """Single-process results of every case, computed once here rather than on every rank."""
    q, k, v, dout, doc_ids = _inputs()
    return [_single(q, k, v, dout, mech, causal, **params) for _, _, (mech, causal, params), _ in _cases(q, k, v, doc_ids)]


@pytest.mark.parametrize("world", [2, 4])
def test_every_strategy_matches_single_process(world, expected):
    run(world, _every_strategy, expected)
