"""Layouts checked exactly: values that encode (batch, position, head) must land where they belong."""
import pytest
import torch

from attnkit.distributed import Layout, Sharding, ring_attention
from attnkit.distributed import blocks
from attnkit.distributed.layout import permute, unpermute
from attnkit.distributed.ring import Plan
from attnkit.distributed.ulysses import heads_to_seq, seq_to_heads
from attnkit.distributed.comm import Group
from attnkit.masks.base import MaskMod

from .spawn import run


def encoded(batch, heads, seq, dim):
    """``x[b, h, p, :] = 10000 b + 10 p + h`` (exact in fp32 at these sizes)."""
    b = torch.arange(batch).view(-1, 1, 1, 1)
    h = torch.arange(heads).view(1, -1, 1, 1)
    p = torch.arange(seq).view(1, 1, -1, 1)
    return (10000 * b + 10 * p + h).float().expand(batch, heads, seq, dim).contiguous()


def test_zigzag_and_contiguous_positions():
    assert Layout("zigzag", 2, 8).positions(0).tolist() == [0, 1, 6, 7]
    assert Layout("zigzag", 2, 8).positions(1).tolist() == [2, 3, 4, 5]
    assert Layout("contiguous", 2, 8).positions(1).tolist() == [4, 5, 6, 7]
    x = encoded(1, 1, 24, 1)
    for kind in ("zigzag", "contiguous"):
        shards = [Sharding(24, layout=kind, rank=r, world_size=3).shard(x) for r in range(3)]
        lay = Layout(kind, 3, 24)
        assert torch.equal(unpermute(torch.cat(shards, dim=2), lay, 2), x)
        assert torch.equal(permute(x, lay, 2), torch.cat(shards, dim=2))
        pos = Sharding(24, layout=kind, rank=1, world_size=3).positions()
        assert torch.equal(Sharding(24, layout=kind, rank=1, world_size=3).shard(x)[0, 0, :, 0], 10.0 * pos)


@pytest.mark.parametrize("kind,world,seq", [("zigzag", 3, 10), ("contiguous", 4, 6), ("zigzag", 0, 8)])
def test_bad_world_size_or_length_refused(kind, world, seq):
    with pytest.raises(ValueError, match="world_size|divisible"):
        Layout(kind, world, seq)


class _FakeGroup:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def _work(plan):
    """Score entries each ring step computes (partial blocks count whole)."""
    return [sum((qs.stop - qs.start) * (ks.stop - ks.start) for qs, ks, _ in pairs) for pairs in plan.steps]


def test_zigzag_balances_causal_work_and_masks_skip_blocks():
    P, N = 4, 64
    causal = blocks.build_mask(causal=True, window=None, doc_ids=None, mask_mod=None)
    zigzag = [_work(Plan(_FakeGroup(r, P), Layout("zigzag", P, N), causal, 1, 1, 1.0, 8, "cpu", 64)) for r in range(P)]
    for step in range(1, P):  # after the local step, every rank computes the same amount
        assert len({w[step] for w in zigzag}) == 1, zigzag
    contiguous = [_work(Plan(_FakeGroup(r, P), Layout("contiguous", P, N), causal, 1, 1, 1.0, 8, "cpu", 64))
                  for r in range(P)]
    assert contiguous[0][1:] == [0, 0, 0] and contiguous[P - 1][1:] == [256] * 3  # unbalanced
    window = blocks.build_mask(causal=True, window=3, doc_ids=None, mask_mod=None)
    plan = Plan(_FakeGroup(2, P), Layout("contiguous", P, N), window, 1, 1, 1.0, 8, "cpu", 64)
    assert [len(p) for p in plan.steps] == [1, 1, 0, 0]  # only the previous rank's block is within reach


def _one_key(shift, n):
    """Query at position p sees exactly the key at (p + shift) mod n (no tile classifier: checked per pair)."""
    return MaskMod(lambda b, h, q, kv: kv == (q + shift) % n, None, f"one_key({shift})")


def _ring_moves_every_block(rank, world):
    B, H, Hkv, N, D = 2, 4, 2, 16, 3
    torch.manual_seed(0)  # q and k only need to be finite: the mask picks one key per query
    for kind in ("zigzag", "contiguous"):
        sh = Sharding(N, layout=kind)
        q = torch.randn(B, H, N, D)
        v = encoded(B, Hkv, N, D)
        dout = encoded(B, H, N, D) / 10
        for shift in range(N):  # every shift puts the chosen key on another rank's block
            ql, kl, vl = (sh.shard(t).requires_grad_() for t in (q, torch.randn(B, Hkv, N, D), v))
            out = ring_attention(ql, kl, vl, layout=kind, mask_mod=_one_key(shift, N))
            out.backward(sh.shard(dout))
            src = (sh.positions() + shift) % N
            want = v[:, torch.arange(H) // (H // Hkv)][:, :, src]
            assert torch.equal(out, want), (kind, shift)
            full_dv = sh.gather(vl.grad)
            readers = (torch.arange(N) - shift) % N  # the query that reads key j
            want_dv = dout[:, :, readers].reshape(B, Hkv, H // Hkv, N, D).sum(2)
            assert torch.equal(full_dv, want_dv), (kind, shift)
            assert not ql.grad.any() and not kl.grad.any()


@pytest.mark.parametrize("world", [2, 4])
def test_ring_moves_every_block_exactly(world):
    run(world, _ring_moves_every_block)


def _all_to_all_places_every_value(rank, world):
    B, H, N, D = 2, 4, 16, 2
    g = Group(None, "test")
    for kind in ("zigzag", "contiguous"):
        sh = Sharding(N, layout=kind)
        x = encoded(B, H, N, D)
        heads = unpermute(seq_to_heads(sh.shard(x), g), sh.layout, 2)
        mine = torch.arange(rank * H // world, (rank + 1) * H // world)
        assert torch.equal(heads, x[:, mine]), kind
        assert torch.equal(heads_to_seq(permute(heads, sh.layout, 2).contiguous(), g), sh.shard(x)), kind


@pytest.mark.parametrize("world", [2, 4])
def test_all_to_all_places_every_value_exactly(world):
    run(world, _all_to_all_places_every_value)
