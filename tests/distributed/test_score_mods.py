"""Ring and BurstAttention with the chunked kernel's score modifiers equal single-process attention on 2 and 4 ranks.

The modifiers are built from the registered mechanisms (``spec.extra["softmax_score_mod"]``) and see global
positions; the learned T5 bias table gets its gradient too (each rank's share, summed over the group).
"""
import pytest
import torch
import torch.distributed as dist

import attnkit
from attnkit import registry
from attnkit.distributed import Sharding, burst_attention, ring_attention

from .spawn import run

B, H, HKV, N, D = 1, 4, 2, 32, 8
TOL = 1e-5
# (mechanism, params, causal, strategy, layout)
CASES = [("alibi", {}, True, ring_attention, "zigzag"),
         ("softcap", {"cap": 2.0}, False, ring_attention, "contiguous"),
         ("t5", {"max_distance": 12}, True, burst_attention, "zigzag"),
         ("t5", {"max_distance": 12}, False, ring_attention, "zigzag")]


def _inputs():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(B, H, N, D, generator=g), torch.randn(B, HKV, N, D, generator=g), torch.randn(B, HKV, N, D, generator=g)
    return q, k, v, torch.randn(B, H, N, D, generator=g), torch.randn(H, 16, generator=g)


def _params(mechanism, params, table):
    return {**params, "table": table} if mechanism == "t5" else dict(params)


def _single(mechanism, params, causal):
    q, k, v, dout, table = _inputs()
    leaves = [t.clone().requires_grad_() for t in (q, k, v, table)]
    out = attnkit.attention(*leaves[:3], mechanism, causal=causal, **_params(mechanism, params, leaves[3]))
    out.backward(dout)
    return [out.detach()] + [t.grad for t in leaves]


def _distributed(rank, world, expected):
    q, k, v, dout, table = _inputs()
    for (mechanism, params, causal, strategy, layout), want in zip(CASES, expected):
        sh = Sharding(N, layout=layout)
        ql, kl, vl = (sh.shard(t).requires_grad_() for t in (q, k, v))
        tab = table.clone().requires_grad_()
        kw = _params(mechanism, params, tab)
        mod = registry.get(mechanism).extra["softmax_score_mod"](ql, kl, causal=causal, scale=D ** -0.5, **kw)
        inputs = (tab,) if mechanism == "t5" else ()
        out = strategy(ql, kl, vl, layout=layout, causal=causal, score_mod=mod, score_mod_inputs=inputs)
        out.backward(sh.shard(dout))
        d_table = tab.grad if tab.grad is not None else torch.zeros_like(tab)
        dist.all_reduce(d_table)
        got = [sh.gather(t) for t in (out.detach(), ql.grad, kl.grad, vl.grad)] + [d_table]
        for name, a, b in zip(("out", "dq", "dk", "dv", "d table"), got, want):
            if mechanism != "t5" and name == "d table":
                continue
            err = (a - b).abs().max().item()
            assert err <= TOL, f"{strategy.__name__} {mechanism} causal={causal} {layout} on {world}: {name} off by {err:.2e}"


@pytest.fixture(scope="module")
def expected():
    return [_single(m, p, c) for m, p, c, _, _ in CASES]


@pytest.mark.parametrize("world", [2, 4])
def test_score_modifiers_match_single_process(world, expected):
    run(world, _distributed, expected)


def test_modifiers_that_read_the_queries_are_not_offered():
    """Shaw's relative term and the additive / general scores read q and k rows by position: they cannot run
    on a tile of a shard, so they do not declare their modifier tileable."""
    for name in ("shaw", "additive", "luong_general"):
        assert "softmax_score_mod" not in registry.get(name).extra, name
    assert {"alibi", "softcap", "t5", "softmax"} <= {n for n in registry.names() if "softmax_score_mod" in registry.get(n).extra}
