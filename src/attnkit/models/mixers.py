"""Sequence mixers of a model layer: one attention mechanism, Hymba's parallel heads, a Titans
architecture, Jet-Nemotron's JetBlock or a Deconstructing Attention variant.

Every mixer is called as ``mixer(x, causal=, mask=, state=, return_state=)``
and, with ``return_state``, returns the state to continue the sequence with
(a KV cache, a recurrent state, or a :class:`ParallelState` of both).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import Attention
from ..positional import LogScaling, RoPE
from .config import shareable
from .deconstructed import build_deconstructed
from .jetblock import JetBlock
from .kv_sharing import SharedKVAttention
from .titans import build_titans


def build_mixer(spec: dict, dim: int, heads: int, kv_heads: int | None, head_dim: int,
                kv_producer: nn.Module | None = None) -> nn.Module:
    """The mixer of ``spec``; with ``kv_producer`` (the previous layer's mixer, same spec) it reads
    that mixer's keys and values (:mod:`attnkit.models.kv_sharing`)."""
    if "titans" in spec:
        return build_titans(spec, dim, heads, kv_heads, head_dim)
    if "deconstructed" in spec:
        return build_deconstructed(spec, dim, heads, head_dim)
    if "jetblock" in spec:
        return JetBlock(dim, heads, head_dim, **spec["jetblock"])
    if "hymba" in spec:
        return ParallelHeads(spec["hymba"], dim, heads, kv_heads, head_dim, kv_producer=kv_producer)
    if kv_producer is not None:
        return SharedKVAttention(kv_producer)
    rope = RoPE(head_dim) if spec["rope"] else None
    if spec.get("log_scaling") is not None:
        rope = LogScaling(spec["log_scaling"], inner=rope)
    cp = {}
    if "strategy" in spec:  # context parallel: this rank's shard of the sequence, the default group
        cp = {"context_parallel": True, "strategy": spec["strategy"], "layout": spec["layout"]}
    return Attention(dim, heads, mechanism=spec["mechanism"], kv_heads=kv_heads, head_dim=head_dim, rope=rope,
                     **cp, **spec["params"])


class ParallelState:
    """The states of a layer's parallel branches; ``length`` is the tokens consumed."""

    def __init__(self, states: tuple):
        self.states = states
        self.length = states[0].length


class ParallelHeads(nn.Module):
    """Hymba's hybrid-head layer (Dong et al., "Hymba: A Hybrid-head Architecture for Small Language Models").

    The layer's heads are split between branches that run side by side on the
    same input (e.g. softmax attention heads for high-resolution recall and
    linear/SSM heads for summarising context). Each branch's output is
    normalised and rescaled by a learned vector, the branches are averaged and
    projected: ``W_out · mean_i(beta_i * norm(branch_i(x)))``.
    """

    def __init__(self, branches: list[dict], dim: int, heads: int, kv_heads: int | None, head_dim: int,
                 kv_producer: "ParallelHeads | None" = None):
        super().__init__()
        n = len(branches)
        if heads % n:
            raise ValueError(f"heads={heads} must split evenly over the {n} parallel branches of a hymba mixer")
        if kv_heads is not None and kv_heads % n:
            raise ValueError(f"kv_heads={kv_heads} must split evenly over the {n} parallel branches of a hymba mixer")
        per_kv = None if kv_heads is None else kv_heads // n
        for b in branches:
            if "hymba" in b:
                raise ValueError("hymba branches must be mechanisms, not nested hymba mixers")
        producers = [None] * n if kv_producer is None else [
            p if shareable(b) else None for b, p in zip(branches, kv_producer.branches)]
        self.shared = [p is not None for p in producers]
        self.branches = nn.ModuleList(build_mixer(b, dim, heads // n, per_kv, head_dim, kv_producer=p)
                                      for b, p in zip(branches, producers))
        self.norms = nn.ModuleList(nn.RMSNorm(dim) for _ in branches)
        self.betas = nn.Parameter(torch.ones(n, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, *, causal=False, mask=None, state=None, return_state=False, kv_source=None):
        """``kv_source = (producer_input, producer_state_before_this_call)`` when branches share KV."""
        states = state.states if state is not None else (None,) * len(self.branches)
        outs, new_states = [], []
        for j, (branch, norm, beta, s) in enumerate(zip(self.branches, self.norms, self.betas, states)):
            shared = {}
            if self.shared[j]:
                source, prior = kv_source
                shared = {"kv_source": (source, None if prior is None else prior.states[j])}
            y = branch(x, causal=causal, mask=mask, state=s, return_state=return_state, **shared)
            if return_state:
                y, s = y
                new_states.append(s)
            outs.append(beta * norm(y))
        out = self.out_proj(torch.stack(outs).mean(0))
        return (out, ParallelState(tuple(new_states))) if return_state else out
