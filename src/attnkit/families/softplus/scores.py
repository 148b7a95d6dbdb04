"""The length-scaled cosine scores of LSSA and LSSAR (equations in the package docstring)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def unit_qk(q, k):
    """Cosine scores times ``log d``: l2-normalised q (times log d) and k."""
    return F.normalize(q, dim=-1) * math.log(q.shape[-1]), F.normalize(k, dim=-1)


def visible_counts(q_pos: torch.Tensor, kv_len: int, causal: bool) -> torch.Tensor:
    """N_i: keys query i sees (at least 1, so a row that sees nothing gets log N = 0)."""
    n = (q_pos + 1).clamp_min(1) if causal else torch.full_like(q_pos, kv_len)
    return n.to(torch.float64)


def reweight_offset(counts: torch.Tensor) -> torch.Tensor:
    """LSSAR's offset o_i: 1, or 0 for rows that see at most 3 tokens."""
    return (counts > 3).to(counts.dtype)
