"""Running a test body on P local processes joined by a gloo process group on 127.0.0.1.

The processes are forked, so they start with torch and attnkit already imported
(about 0.1 s instead of seconds per process on a loaded machine); each runs
torch with one thread.

A rank that finishes waits for the others at a barrier and then ends without
``destroy_process_group()``: the forked process leaves through ``os._exit``, so
nothing is torn down. On torch 2.6 the teardown itself deadlocks now and then:
``ProcessGroupGloo``'s destructor joins its worker threads while holding the
GIL, and a worker still releasing a tensor that Python has let go of needs the
GIL to do so.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(seconds=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, timeout, fn, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timeout)
    fn(rank, world_size, *args)
    dist.barrier()  # no rank leaves while another may still talk to it


def run(world_size: int, fn, *args, timeout: datetime.timedelta = TIMEOUT) -> None:
    """``fn(rank, world_size, *args)`` on ``world_size`` processes; a failure on any rank fails the call."""
    mp.start_processes(_entry, args=(world_size, free_port(), timeout, fn, args), nprocs=world_size, join=True,
                       start_method="fork")
