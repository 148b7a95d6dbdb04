"""Star Attention on 2 and 4 processes equals single-process attention under Star Attention's mask."""
import pytest
import torch

import attnkit
from attnkit.distributed import Sharding, star_attention

from .spawn import run

B, H, HKV, D, BLOCK, M = 1, 4, 2, 8, 6, 5
TOL = 1e-5


def star_mask(world: int) -> torch.Tensor:
    """Context rows see the anchor block (rank 0's) and their own block causally; the anchor block itself is
    causal; query rows see everything before them."""
    total = world * BLOCK + M
    i, j = torch.arange(total)[:, None], torch.arange(total)[None, :]
    block_i, block_j = i // BLOCK, j // BLOCK
    context = (i < world * BLOCK) & (((block_j == block_i) & (j <= i)) | ((block_j == 0) & (block_i > 0)))
    return torch.where(i < world * BLOCK, context, j <= i)


def _inputs(world):
    g = torch.Generator().manual_seed(world)
    total = world * BLOCK + M
    q, dout = (torch.randn(B, H, total, D, generator=g) for _ in range(2))
    k, v = (torch.randn(B, HKV, total, D, generator=g) for _ in range(2))
    return q, k, v, dout


def _expected(world):
    q, k, v, dout = (t.clone() for t in _inputs(world))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = attnkit.attention(q, k, v, "softmax", mask=star_mask(world))
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def _star(rank, world, expected):
    q, k, v, dout = _inputs(world)
    n = world * BLOCK
    sh = Sharding(n, layout="contiguous")
    ctx = [sh.shard(t[:, :, :n]).requires_grad_() for t in (q, k, v)]
    query = [t[:, :, n:].clone().requires_grad_() for t in (q, k, v)]
    out, query_out = star_attention(*ctx, *query)
    ((out * sh.shard(dout[:, :, :n])).sum() + (query_out * dout[:, :, n:]).sum()).backward()
    got_out = torch.cat([sh.gather(out.detach()), query_out.detach()], dim=2)
    got = [got_out] + [torch.cat([sh.gather(c.grad), qt.grad], dim=2) for c, qt in zip(ctx, query)]
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        err = (a - b).abs().max().item()
        assert err <= TOL, f"star attention on {world} ranks, rank {rank}: {name} differs by {err:.2e}"


@pytest.mark.parametrize("world", [2, 4])
def test_star_attention_matches_its_mask_on_one_process(world):
    run(world, _star, _expected(world))
