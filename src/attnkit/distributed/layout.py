"""How a sequence is split across the ranks of a context-parallel group, and back.

Two layouts:

- ``contiguous``: rank ``r`` holds positions ``[r n, (r + 1) n)`` with ``n = N / P``.
- ``zigzag``: the sequence is cut into ``2 P`` chunks of ``c = N / (2 P)``; rank
  ``r`` holds chunks ``r`` and ``2 P - 1 - r``. Under a causal mask every rank
  then does the same work at every ring step (the early chunk sees little, the
  late chunk sees much), the load balancing of ring-flash-attention's zigzag
  ring and of Striped/Llama-3 context parallelism.

A rank's shard is a list of *runs*: ``(start, length)`` stretches of consecutive
positions, in the order they are stored. :class:`Sharding` cuts inputs, document
ids and RoPE positions with one layout, and gathers outputs back.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

LAYOUTS = ("zigzag", "contiguous")


class Layout:
    """Which global positions each of ``world_size`` ranks holds, for a sequence of ``seq_len``."""

    def __init__(self, kind: str, world_size: int, seq_len: int):
        if kind not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {kind!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        pieces = 2 * world_size if kind == "zigzag" else world_size
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < pieces or seq_len % pieces:
            raise ValueError(
                f"a {kind} layout over {world_size} ranks needs a sequence length divisible by {pieces} "
                f"(at least {pieces}), got {seq_len}; pad the sequence or change the world size"
            )
        self.kind, self.world_size, self.seq_len = kind, world_size, seq_len
        self.local_len = seq_len // world_size

    def runs(self, rank: int) -> list[tuple[int, int]]:
        """``(start, length)`` of each stretch of consecutive positions rank ``rank`` stores, in order."""
        if self.kind == "contiguous":
            return [(rank * self.local_len, self.local_len)]
        c = self.local_len // 2
        return [(rank * c, c), ((2 * self.world_size - 1 - rank) * c, c)]

    def positions(self, rank: int, device=None) -> torch.Tensor:
        """Global positions of rank ``rank``'s tokens, in the order they are stored."""
        return torch.cat([torch.arange(s, s + n, device=device) for s, n in self.runs(rank)])

    def order(self, device=None) -> torch.Tensor:
        """Global position of every slot when the ranks' shards are concatenated (rank 0 first)."""
        return torch.cat([self.positions(r, device) for r in range(self.world_size)])

    def __repr__(self) -> str:
        return f"Layout({self.kind!r}, world_size={self.world_size}, seq_len={self.seq_len})"


class Sharding:
    """One rank's view of a layout: cut full tensors into its shard, gather shards back.

    ``Sharding(seq_len, group=group, layout="zigzag")`` reads rank and world size
    from the process group (or pass ``rank=``/``world_size=`` without one).
    Use the same object for q/k/v, document ids and positions so they agree::

        sh = Sharding(N, group=pg)
        q_local = sh.shard(q)                    # (B, H, N / P, D)
        pos = sh.positions(q.device)             # for RoPE: rope.rotate(q_local, pos)
        out = sh.gather(out_local)               # (B, H, N, D) in natural order, on every rank
    """

    def __init__(self, seq_len: int, *, group=None, layout: str = "zigzag", rank: int | None = None,
                 world_size: int | None = None):
        if rank is None or world_size is None:
            if not dist.is_available() or not dist.is_initialized():
                raise ValueError("Sharding needs an initialised process group, or rank= and world_size=")
            rank, world_size = dist.get_rank(group), dist.get_world_size(group)
        self.layout = Layout(layout, world_size, seq_len)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.group = rank, group

    def positions(self, device=None) -> torch.Tensor:
        """Global positions of this rank's tokens (for RoPE and position-dependent masks)."""
        return self.layout.positions(self.rank, device)

    def shard(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This rank's slice of ``x`` along the sequence dimension ``dim`` (2 for q/k/v, 1 for ids)."""
        if x.shape[dim] != self.layout.seq_len:
            raise ValueError(f"shard: dimension {dim} of a tensor shaped {tuple(x.shape)} must be the "
                             f"sequence length {self.layout.seq_len}")
        parts = [x.narrow(dim, s, n) for s, n in self.layout.runs(self.rank)]
        return torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def gather(self, x_local: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """Every rank's shard put back in natural order, on every rank (not differentiable)."""
        x_local = x_local.contiguous()
        parts = [torch.empty_like(x_local) for _ in range(self.layout.world_size)]
        dist.all_gather(parts, x_local, group=self.group)
        return unpermute(torch.cat(parts, dim=dim), self.layout, dim)


def unpermute(x: torch.Tensor, layout: Layout, dim: int) -> torch.Tensor:
    """``x`` with its ``dim`` in shard order (rank 0's shard first) put in natural position order."""
    inverse = torch.argsort(layout.order(x.device))
    return x.index_select(dim, inverse)


def permute(x: torch.Tensor, layout: Layout, dim: int) -> torch.Tensor:
    """``x`` with its ``dim`` in natural order put in shard order (the inverse of :func:`unpermute`)."""
    return x.index_select(dim, layout.order(x.device))
