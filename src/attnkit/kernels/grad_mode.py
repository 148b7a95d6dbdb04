"""Whether a call on some tensors is recorded for autograd (forms that copy nothing or write in place run only
when it is not)."""
from __future__ import annotations

import torch


def records_graph(*tensors: torch.Tensor) -> bool:
    """True when gradients are enabled and any of ``tensors`` requires one: an op on them now joins the graph."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
