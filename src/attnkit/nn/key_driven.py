"""Key-driven grouped-query attention (KDGQA and its dynamic variant DGQA).

Khan et al., "Beyond Uniform Query Distribution: Key-Driven Grouped Query
Attention": GQA gives every kv head the same number of query heads. KDGQA
instead hands out the query heads in proportion to the key heads' norms,
measured in each forward pass: with ``n_g = sum_{batch} ||K_g||_F`` min-max
normalised to ``[0, 1]``, group ``g`` gets ``round(H * n_g / sum n)`` query heads
(then adjusted so the counts sum to ``H``), assigned in order. DGQA
(``mode="dgqa"``) allocates from an exponential moving average of the norms
kept in a buffer, updated while training (``ema = beta n + (1 - beta) ema``, as
in the authors' code) and frozen in eval mode.

Because KDGQA's allocation looks at every key of the sequence, it is
non-causal: ``causal=True`` is refused. DGQA in eval mode uses the stored
allocation only, so it may be causal.
"""
from __future__ import annotations

import torch

from ..api import attention
from .attention import Attention
from ..validation import check_tokens
from .dropout import dropout_p
from .factory import factory_kwargs


def allocate_queries(norms: torch.Tensor, heads: int, *, min_max: bool) -> list[int]:
    """Query heads per kv group, proportional to ``norms`` and summing to ``heads``."""
    n = norms.detach().double()
    if min_max:
        span = n.max() - n.min()
        n = (n - n.min()) / span if span > 0 else torch.ones_like(n)
    if n.sum() <= 0:
        n = torch.ones_like(n)
    counts = (n / n.sum() * heads).round().long()
    while counts.sum() > heads:  # the authors' repair: take from the largest, give to the smallest
        counts[counts.argmax()] -= 1
    while counts.sum() < heads:
        counts[counts.argmin()] += 1
    return counts.tolist()


@factory_kwargs
class KeyDrivenGQA(Attention):
    """Key-driven grouped-query attention (KDGQA, and DGQA with ``mode``): query heads are
    allocated to kv heads by key norms. See the module docstring.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int, *, mode: str = "kdgqa", beta: float = 0.9, **kwargs):
        super().__init__(dim, heads, kv_heads=kv_heads, **kwargs)
        if mode not in ("kdgqa", "dgqa"):
            raise ValueError(f"mode must be 'kdgqa' or 'dgqa', got {mode!r}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        self.mode, self.beta = mode, beta
        self.register_buffer("norm_ema", torch.ones(kv_heads))  # equal norms: the uniform GQA allocation
        self.allocation = [heads // kv_heads] * kv_heads

    def forward(self, x, context=None, *, causal=False, mask=None):
        check_tokens("x", x, self.dim)
        dynamic = self.mode == "kdgqa" or self.training
        if causal and dynamic:
            raise ValueError(f"{self.mode.upper()} allocates query heads from the norms of all keys, which sees "
                             f"future tokens; causal=True is refused (DGQA in eval mode may be causal)")
        if context is not None:
            check_tokens("context", context, self.context_dim)
        q = self.split_heads(self.q_proj(x), self.heads)
        if self.q_norm is not None:
            q = self.q_norm(q)
        k, v = self.project_kv(x if context is None else context)
        if self.rope is not None and context is None:
            q, k = self.rope.apply(q, k, q_offset=0, k_offset=0)
        norms = torch.linalg.vector_norm(k, dim=(2, 3)).sum(0)
        if self.mode == "kdgqa":
            self.allocation = allocate_queries(norms, self.heads, min_max=True)
        else:
            if self.training:
                with torch.no_grad():
                    self.norm_ema.mul_(1 - self.beta).add_(self.beta * norms.to(self.norm_ema.dtype))
            self.allocation = allocate_queries(self.norm_ema, self.heads, min_max=False)
        group = torch.repeat_interleave(torch.arange(self.kv_heads, device=x.device),
                                        torch.tensor(self.allocation, device=x.device))
        out = attention(q, k[:, group], v[:, group], self.mechanism, causal=causal, mask=mask, dropout_p=dropout_p(self),
                        **self._params(x, q, k, v))
        return self.merge_heads(out, x)
