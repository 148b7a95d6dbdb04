"""nn.Attention(context_parallel=...) on 2 processes equals the single-process layer: outputs and all gradients."""
import pytest
import torch
import torch.distributed as dist

from attnkit.distributed import Sharding
from attnkit.nn import Attention

from .spawn import run

B, N, DIM = 1, 16, 32
TOL = 1e-5
CASES = [("softmax", "ring", {"rope": True, "kv_heads": 2}), ("softmax", "ulysses", {"kv_heads": 2}),
         ("sliding_window", "ring", {"window": 3}), ("gla", "lasp2", {}),
         ("softmax", "allgather", {"rope": True, "kv_heads": 2}), ("alibi", "burst", {"kv_heads": 2}),
         ("softcap", "ring", {"cap": 1.5})]


def _layer(mechanism, extra, **cp):
    torch.manual_seed(0)
    return Attention(DIM, 4, mechanism=mechanism, **extra, **cp)


def _single(mechanism, extra):
    layer = _layer(mechanism, extra)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, DIM, generator=g, requires_grad=True)
    dout = torch.randn(B, N, DIM, generator=g)
    layer(x, causal=True).backward(dout)
    return x.detach(), dout, layer(x, causal=True).detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.fixture(scope="module")
def expected():
    return [_single(m, extra) for m, _, extra in CASES]


def _every_case(rank, world, expected):
    for (mechanism, strategy, extra), (x, dout, out, dx, grads) in zip(CASES, expected):
        layer = _layer(mechanism, extra, context_parallel=True, strategy=strategy)
        sh = Sharding(N, layout=layer.context_parallel.layout)
        xl = sh.shard(x, dim=1).requires_grad_()
        yl = layer(xl, causal=True)
        yl.backward(sh.shard(dout, dim=1))
        got = {"out": (sh.gather(yl.detach(), dim=1), out), "dx": (sh.gather(xl.grad, dim=1), dx)}
        for name, p in layer.named_parameters():
            dist.all_reduce(p.grad)  # the parameters' gradient is the sum of every rank's share
            got[name] = (p.grad, grads[name])
        for what, (a, b) in got.items():
            err = (a - b).abs().max().item()
            assert err <= TOL, f"{mechanism}/{strategy} on {world} ranks: {what} differs by {err:.2e}"


def test_context_parallel_layer_matches_single_process(expected):
    run(2, _every_case, expected)


def test_context_parallel_refusals():
    with pytest.raises(ValueError, match="use strategy='ulysses'"):
        Attention(DIM, 4, mechanism="sigmoid", context_parallel=True, strategy="burst")
    with pytest.raises(ValueError, match="use strategy='ulysses'"):
        Attention(DIM, 4, mechanism="alibi", context_parallel=True, strategy="allgather")
    with pytest.raises(ValueError, match="pass a group"):
        Attention(DIM, 4, strategy="ring")
    with pytest.raises(TypeError, match="ProcessGroup"):
        Attention(DIM, 4, context_parallel="nccl")


def _hybrid(seed, **cp):
    """LASP-2H: a linear layer (LASP-2) then a softmax layer (all-gather), one contiguous layout."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(Attention(DIM, 4, mechanism="linear", **({"strategy": "lasp2"} if cp else {}), **cp),
                               Attention(DIM, 4, rope=True, **({"strategy": "allgather"} if cp else {}), **cp))


def _stack(layers, x):
    for layer in layers:
        x = x + layer(x, causal=True)
    return x


def _hybrid_case(rank, world, x, dout, out, dx):
    layers = _hybrid(0, context_parallel=True)
    sh = Sharding(N, layout="contiguous")
    xl = sh.shard(x, dim=1).requires_grad_()
    _stack(layers, xl).backward(sh.shard(dout, dim=1))
    for what, a, b in (("out", sh.gather(_stack(layers, xl).detach(), dim=1), out), ("dx", sh.gather(xl.grad, dim=1), dx)):
        err = (a - b).abs().max().item()
        assert err <= TOL, f"LASP-2H stack on {world} ranks: {what} differs by {err:.2e}"


def test_lasp2h_hybrid_stack_matches_single_process():
    layers = _hybrid(0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, N, DIM, generator=g, requires_grad=True)
    dout = torch.randn(B, N, DIM, generator=g)
    _stack(layers, x).backward(dout)
    run(2, _hybrid_case, x.detach(), dout, _stack(layers, x).detach(), x.grad)
