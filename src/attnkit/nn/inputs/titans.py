"""The layer computing the Titans memory's inputs (the input module of ``titans``).

Behrouz et al., "Titans: Learning to Memorize at Test Time": data-dependent step size
``theta``, momentum decay ``eta`` and forgetting ``alpha``, each ``sigmoid`` of a
linear map of the token, per head; and the memory's learned initial weights ``w1``, ``w2``.

The paper leaves the step size's range open. Here ``theta = max_step * sigmoid(.)`` with
``max_step = 1e-2`` by default, titans-pytorch's step transform (``sigmoid(.) * max_lr``,
``max_lr = 1e-2``). Unbounded, the memory's inner gradient steps of an untrained layer diverge
within a few dozen tokens; on the byte-level Shakespeare LM (head dim 16, chunks of 16) a bound
of ``1 / 16`` still diverged after 28 training steps, while ``1 / 64`` and ``1 / 256`` trained.
"""
from __future__ import annotations

import torch
from torch import nn

from ...validation import check_float


class TitansInputs(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int | None = None,
                 max_step: float | None = None):
        super().__init__()
        hidden = hidden or head_dim
        if max_step is not None and check_float("max_step", max_step, positive=True, finite=True) > 1:
            raise ValueError(f"max_step must be in (0, 1] (theta is a step size in (0, 1)), got {max_step}")
        self.max_step = 1e-2 if max_step is None else float(max_step)
        self.gates = nn.Linear(dim, 3 * heads)
        self.w1 = nn.Parameter(torch.randn(heads, head_dim, hidden) / head_dim**0.5)
        self.w2 = nn.Parameter(torch.randn(heads, hidden, head_dim) / hidden**0.5)

    def forward(self, x, q, k, v) -> dict:
        theta, eta, alpha = torch.sigmoid(self.gates(x)).transpose(1, 2).to(q.dtype).chunk(3, dim=1)  # (B, H, N) each
        return {"theta": self.max_step * theta, "eta": eta, "alpha": alpha,
                "w1": self.w1.to(q.dtype), "w2": self.w2.to(q.dtype)}
