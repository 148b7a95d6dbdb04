"""Bytes each strategy sends, counted around the collectives, equal the analytic counts of the benchmark.

The analytic count is the busiest rank's (Star Attention's rank 0 also broadcasts the anchor block);
every other strategy sends the same on every rank.
"""
import pytest
import torch
import torch.distributed as dist

from attnkit.bench import context_parallel as cp
from attnkit.distributed import count_bytes

from .spawn import run

N = 64


def _counts(rank, world):
    for strategy in ("ring", "burst", "ulysses", "lasp2", "allgather", "star"):
        call = cp._call(strategy, N, world, True)
        with count_bytes() as traffic:
            call()
        sent = torch.tensor([traffic.sent, -traffic.sent])
        dist.all_reduce(sent, op=dist.ReduceOp.MAX)
        busiest, least = sent[0].item(), -sent[1].item()
        assert busiest == cp.analytic_bytes(strategy, N, world), (strategy, traffic.by_op)
        assert strategy == "star" or least == busiest, (strategy, traffic.by_op)
    dist.barrier()


@pytest.mark.parametrize("world", [2, 4])
def test_bytes_sent_equal_the_analytic_count(world):
    run(world, _counts)
