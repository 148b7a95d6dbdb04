"""Positional encodings that act on q and k, usable with every mechanism.

Pass one as ``attnkit.attention(..., position=RoPE(head_dim))``: it is applied
to q and k before the mechanism, with positions that continue across
incremental calls. Absolute encodings that are added to token embeddings
(sinusoidal, learned) live in :mod:`attnkit.positional.absolute`.
"""
from .rope import NoPE, RoPE

__all__ = ["RoPE", "NoPE"]
