"""Attention flow: Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (2020).

The layers form a graph: one node per token per layer (layer 0 the inputs), an edge from
token ``i`` of layer ``l`` to token ``j`` of layer ``l - 1`` whose capacity is the
residual-mixed attention ``A^_l[i, j]`` (:func:`attnkit.interpret.rollout.layer_matrices`).
The flow from output token ``i`` to input token ``j`` is the value of the maximum flow
from node ``(L, i)`` to node ``(0, j)``; each output token's flows are normalised to sum
to one, as the authors' code does. Unlike rollout, which multiplies proportions along
paths, the flow of a path is bounded by its smallest capacity.

The max-flow is networkx's (Edmonds-Karp); a graph has ``(L + 1) N`` nodes and ``L N^2``
edges and one max-flow runs per (output, input) pair, so keep ``N`` to a few dozen tokens.
"""
from __future__ import annotations

import torch

from .rollout import layer_matrices


def attention_flow(weights, *, residual: bool = True, head_reduce: str = "mean") -> torch.Tensor:
    """``(B, N, N)``: row ``i`` is the max-flow from output token ``i`` to each input token, normalised."""
    import networkx as nx
    from networkx.algorithms.flow import edmonds_karp

    layers = layer_matrices(weights, residual=residual, head_reduce=head_reduce)
    B, N = layers[0].shape[0], layers[0].shape[-1]
    L = len(layers)
    out = torch.zeros(B, N, N, dtype=torch.float64)
    for b in range(B):
        graph = nx.DiGraph()
        for level, a in enumerate(layers, start=1):
            caps = a[b].detach().double().cpu()
            for i in range(N):
                for j in range(N):
                    if caps[i, j] > 0:
                        graph.add_edge((level, i), (level - 1, j), capacity=float(caps[i, j]))
        for i in range(N):
            for j in range(N):
                source, sink = (L, i), (0, j)
                if source in graph and sink in graph:
                    out[b, i, j] = nx.maximum_flow_value(graph, source, sink, flow_func=edmonds_karp)
    total = out.sum(dim=-1, keepdim=True)
    out = out / torch.where(total > 0, total, torch.ones_like(total))
    return out.to(device=layers[0].device, dtype=layers[0].dtype)
