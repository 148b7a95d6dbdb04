"""The collectives and point-to-point transfers the strategies use, counted and with clear failures.

Everything goes through ``torch.distributed`` (gloo on CPU, NCCL on GPUs): no
transport of our own. Each wrapper adds the bytes this rank sends to every
active :func:`count_bytes` counter (the benchmark checks them against the
analytic counts), and turns a transport failure (a peer that raised, died or
timed out; the process group's ``timeout`` bounds the wait) into a
``RuntimeError`` that names the strategy, this rank and the peer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Traffic:
    """Bytes this rank sent, in total and per operation name."""

    sent: int = 0
    by_op: dict = field(default_factory=dict)

    def add(self, op: str, nbytes: int) -> None:
        self.sent += nbytes
        self.by_op[op] = self.by_op.get(op, 0) + nbytes


_COUNTERS: list[Traffic] = []


@contextlib.contextmanager
def count_bytes():
    """``with count_bytes() as t: ...`` then ``t.sent`` is the bytes this rank sent meanwhile."""
    t = Traffic()
    _COUNTERS.append(t)
    try:
        yield t
    finally:
        _COUNTERS.remove(t)


def _count(op: str, nbytes: int) -> None:
    for t in _COUNTERS:
        t.add(op, nbytes)


class PeerFailure(RuntimeError):
    """A transfer failed because a peer raised, died or did not answer within the group's timeout."""


class Group:
    """Rank, size and ring neighbours of a process group (``None`` = the default group)."""

    def __init__(self, group, strategy: str):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{strategy} needs torch.distributed initialised (dist.init_process_group)")
        self.group, self.strategy = group, strategy
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    def global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def fail(self, what: str, error: Exception) -> PeerFailure:
        return PeerFailure(
            f"{self.strategy}: {what} failed on rank {self.rank} of {self.size} (a peer raised, died or did not "
            f"answer within the process group's timeout): {error}"
        )

    def shift(self, tensors: list[torch.Tensor], what: str) -> "Pending":
        """Send ``tensors`` to the next rank and receive same-shaped ones from the previous, asynchronously."""
        nxt, prev = self.global_rank((self.rank + 1) % self.size), self.global_rank((self.rank - 1) % self.size)
        tensors = [t.contiguous() for t in tensors]
        out = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, nxt, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, prev, self.group) for t in out]
        requests = dist.batch_isend_irecv(ops)  # posting fails only on bad arguments; transfers fail in wait
        _count("send", sum(t.numel() * t.element_size() for t in tensors))
        return Pending(self, requests, out, what)

    def all_to_all(self, out: torch.Tensor, x: torch.Tensor, what: str) -> None:
        """``dist.all_to_all_single`` with equal splits along dim 0."""
        try:
            dist.all_to_all_single(out, x, group=self.group)
        except RuntimeError as e:
            raise self.fail(what, e) from e
        _count("all_to_all", x.numel() * x.element_size() * (self.size - 1) // self.size)

    def all_gather(self, x: torch.Tensor, what: str) -> list[torch.Tensor]:
        """Every rank's ``x`` (same shape everywhere), rank order."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        try:
            dist.all_gather(parts, x, group=self.group)
        except RuntimeError as e:
            raise self.fail(what, e) from e
        _count("all_gather", x.numel() * x.element_size() * (self.size - 1))
        return parts

    def broadcast(self, x: torch.Tensor, root: int, what: str) -> torch.Tensor:
        """Rank ``root``'s ``x`` on every rank, in a new tensor (counted on the root as P - 1 copies)."""
        buf = x.contiguous().clone() if self.rank == root else torch.empty_like(x, memory_format=torch.contiguous_format)
        try:
            dist.broadcast(buf, self.global_rank(root), group=self.group)
        except RuntimeError as e:
            raise self.fail(what, e) from e
        if self.rank == root:
            _count("broadcast", buf.numel() * buf.element_size() * (self.size - 1))
        return buf

    def all_reduce(self, x: torch.Tensor, what: str) -> None:
        """Sum ``x`` over the ranks, in place (counted as a ring all-reduce: 2 (P - 1) / P of its bytes)."""
        try:
            dist.all_reduce(x, group=self.group)
        except RuntimeError as e:
            raise self.fail(what, e) from e
        _count("all_reduce", 2 * x.numel() * x.element_size() * (self.size - 1) // self.size)

    def agree(self, facts: list[int], names: list[str], device) -> None:
        """Refuse, on every rank alike, a call whose ``facts`` (shapes, settings) differ between ranks."""
        if self.size == 1:
            return
        mine = torch.tensor(facts, dtype=torch.long, device=device)
        everyone = torch.stack(self.all_gather(mine, "checking that every rank has the same shapes")).cpu()
        for i, name in enumerate(names):
            values = everyone[:, i].tolist()
            if len(set(values)) > 1:
                raise ValueError(f"{self.strategy}: {name} differs between ranks ({values} on ranks "
                                 f"0..{self.size - 1}); every rank must hold an equal shard")


class Pending:
    """Transfers in flight; :meth:`wait` returns the received tensors."""

    def __init__(self, group: Group, requests, received, what: str):
        self.group, self.requests, self.received, self.what = group, requests, received, what

    def wait(self) -> list[torch.Tensor]:
        try:
            for r in self.requests:
                r.wait()
        except RuntimeError as e:
            raise self.group.fail(self.what, e) from e
        return self.received
