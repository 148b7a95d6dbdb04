"""Bytes each strategy sends, counted around the collectives, equal the analytic counts of the benchmark."""
import pytest
import torch.distributed as dist

from attnkit.bench import context_parallel as cp
from attnkit.distributed import count_bytes

from .spawn import run

N = 64


def _counts(rank, world):
    for strategy in ("ring", "ulysses", "lasp2"):
        call = cp._call(strategy, N, world, True)
        with count_bytes() as traffic:
            call()
        assert traffic.sent == cp.analytic_bytes(strategy, N, world), (strategy, traffic.by_op)
    dist.barrier()


@pytest.mark.parametrize("world", [2, 4])
def test_bytes_sent_equal_the_analytic_count(world):
    run(world, _counts)
