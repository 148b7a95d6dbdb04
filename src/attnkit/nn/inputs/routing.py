"""The k-means centroids of routing attention inside a layer (the input module of ``routing``).

Roy et al., "Efficient Content-Based Sparse Attention with Routing Transformers":
the centroids are not learned by gradients but follow the queries and keys
routed to them, an exponential moving average
(:func:`attnkit.families.routing.update_centroids`). This module holds them as a
buffer (saved with the model's state) and, in training mode, moves them once per
call with the call's queries and keys, after handing the current ones to the
mechanism.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...families.routing import update_centroids


class RoutingCentroids(nn.Module):
    def __init__(self, heads: int, head_dim: int, clusters: int = 4, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("centroids", F.normalize(torch.randn(heads, clusters, head_dim), dim=-1))

    def forward(self, x, q, k, v) -> dict:
        current = self.centroids.to(q.dtype)
        if self.training:
            with torch.no_grad():
                self.centroids = update_centroids(current, q, k, decay=self.decay).to(self.centroids.dtype)
        return {"centroids": current}
