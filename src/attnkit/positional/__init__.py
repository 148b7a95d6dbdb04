"""Positional encodings that act on q and k, usable with every mechanism.

Pass one as ``attnkit.attention(..., position=RoPE(head_dim))``: it is applied
to q and k before the mechanism, with positions that continue across
incremental calls: ``apply(q, k, *, q_offset, k_offset) -> (q, k)`` encodes the queries and
keys at those first positions, and ``apply_keys(k, *, k_offset)`` the keys alone (as ``apply``
would), for keys with no queries of their own (a mechanism's extra key inputs). Absolute encodings that are added to token embeddings
(sinusoidal, learned) live in :mod:`attnkit.positional.absolute`; contextual
position encoding (CoPE) depends on the scores, so it is a mechanism
(``"cope"``), not an encoding of q and k. :class:`LogScaling` scales the queries
logarithmically past a training length (SWAN-GPT's scaling of its NoPE layers), around an
optional inner encoding. :class:`RandomizedPositions` gives a RoPE a sorted random subset of a
longer range of positions at every call (Ruoss et al.); it is not in :data:`ENCODINGS`, since a
fresh draw per call cannot decode incrementally.

:data:`ENCODINGS` names every q/k encoding with a factory ``head_dim ->
encoding``; the conformance suite composes each with softmax attention.
"""
from .log_scaling import LogScaling
from .randomized import RandomizedPositions
from .rope import NoPE, RoPE

ENCODINGS = {
    "nope": lambda head_dim: NoPE(),
    "nope-log-scaled": lambda head_dim: LogScaling(16),
    "rope": lambda head_dim: RoPE(head_dim),
    "rope-linear": lambda head_dim: RoPE(head_dim, scaling="linear", factor=4.0),
    "rope-ntk": lambda head_dim: RoPE(head_dim, scaling="ntk", factor=4.0),
    "rope-yarn": lambda head_dim: RoPE(head_dim, scaling="yarn", factor=4.0, original_context=64),
}


def encoding(name: str, head_dim: int):
    """The q/k positional encoding registered as ``name``, built for ``head_dim``."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown positional encoding {name!r}; expected one of {sorted(ENCODINGS)}")
    return ENCODINGS[name](head_dim)


__all__ = ["RoPE", "NoPE", "LogScaling", "RandomizedPositions", "ENCODINGS", "encoding"]
