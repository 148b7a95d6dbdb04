"""A rank that raises, dies or hangs makes the others fail with a clear error in bounded time; bad shards refused."""
import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnkit.distributed import ring_attention, ulysses_attention

from .spawn import free_port, run

TIMEOUT_S = 3


def _outcome(rank, world, port, fault, queue):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    torch.set_num_threads(1)
    q = torch.randn(1, 2, 8, 4)
    start = time.monotonic()
    try:
        ring_attention(q, q, q, causal=True)  # a healthy call first
        if rank == 1:
            if fault == "raises":
                raise RuntimeError("injected failure on rank 1")
            if fault == "dies":
                os._exit(7)
            if fault == "hangs":
                time.sleep(60)
        ring_attention(q, q, q, causal=True)
        queue.put((rank, "ok", "", time.monotonic() - start))
    except Exception as e:  # noqa: BLE001 - the test reads what each rank saw
        queue.put((rank, type(e).__name__, str(e), time.monotonic() - start))
    queue.close()
    queue.join_thread()  # the message is out before the process ends
    os._exit(0)  # no teardown handshake with a dead peer


@pytest.mark.parametrize("fault", ["raises", "dies", "hangs"])
def test_a_failing_rank_makes_every_other_rank_fail_clearly(fault):
    world, ctx = 3, mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_outcome, args=(r, world, port, fault, queue)) for r in range(world)]
    for p in procs:
        p.start()
    outcomes = {}
    deadline = time.monotonic() + 4 * TIMEOUT_S + 10
    try:
        while len(outcomes) < world - (fault != "raises") and time.monotonic() < deadline:
            try:
                rank, kind, message, seconds = queue.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty: keep waiting until the deadline
                continue
            outcomes[rank] = (kind, message, seconds)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    if fault == "raises":
        assert outcomes[1][0] == "RuntimeError" and "injected" in outcomes[1][1]
    for rank in (0, 2):
        assert rank in outcomes, f"rank {rank} did not finish within the deadline ({fault})"
        kind, message, seconds = outcomes[rank]
        assert kind == "PeerFailure", (rank, kind, message)
        assert f"rank {rank} of 3" in message and "ring_attention" in message
        assert seconds < 2 * TIMEOUT_S + 5


def _refused_everywhere(rank, world):
    q = torch.randn(1, 4, 8, 4)
    uneven = torch.randn(1, 4, 8 + 2 * rank, 4)
    with pytest.raises(ValueError, match="local sequence length differs between ranks"):
        ring_attention(uneven, uneven, uneven)
    with pytest.raises(ValueError, match="local sequence length differs between ranks"):
        ulysses_attention(uneven, uneven, uneven)
    odd = torch.randn(1, 4, 3, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        ring_attention(odd, odd, odd, layout="zigzag")
    three_heads = torch.randn(1, 3, 8, 4)
    with pytest.raises(ValueError, match="3 query heads do not divide by the world size 2"):
        ulysses_attention(three_heads, three_heads, three_heads)
    with pytest.raises(ValueError, match="K/V heads neither divide"):
        ulysses_attention(torch.randn(1, 6, 8, 4), torch.randn(1, 3, 8, 4), torch.randn(1, 3, 8, 4))
    with pytest.raises(ValueError, match="doc_ids must cover the whole sequence"):
        ring_attention(q, q, q, doc_ids=torch.zeros(1, 8, dtype=torch.long))
    ring_attention(q, q, q)  # the group still works after the refusals


def test_bad_shards_and_world_sizes_refused_on_every_rank():
    run(2, _refused_everywhere)
