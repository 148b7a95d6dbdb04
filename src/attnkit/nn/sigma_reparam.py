"""σReparam and attention entropy, from Zhai et al., "Stabilizing Transformer Training by Preventing
Attention Entropy Collapse" (2023).

Attention entropy (section 3): for one query's weights ``A_i``, ``Ent(A_i) = -sum_j A_ij log A_ij``;
the paper tracks its mean over queries per head and shows that training diverges when it
collapses. The logits' spread grows with the spectral norms of ``W_q`` and ``W_k``, so σReparam
(section 4) re-parametrises every linear layer's weight as

    W^ = (gamma / sigma(W)) W

with ``sigma(W)`` the spectral norm, estimated by one step of power iteration per training step
(``u <- W v / |W v|``, ``v <- W^T u / |W^T u|``, ``sigma = u^T W v``; ``u``, ``v`` carry no gradient)
and ``gamma`` a learned scalar, initialised to 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int
from .factory import check_factory_kwargs


class SigmaReparamLinear(nn.Linear):
    """``nn.Linear`` whose weight is used as ``(gamma / sigma(W)) W``; ``sigma`` is refreshed in training mode.

    No ``dropout=``: a linear layer, no attention weights.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None):
        check_factory_kwargs(device, dtype)
        check_int("in_features", in_features)
        check_int("out_features", out_features)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.gamma = nn.Parameter(torch.ones((), device=device, dtype=dtype))
        u = F.normalize(torch.randn(out_features, device=device, dtype=dtype), dim=0)
        v = F.normalize(torch.randn(in_features, device=device, dtype=dtype), dim=0)
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    @torch.no_grad()
    def power_iteration(self, steps: int = 1) -> None:
        """Refine ``u``, ``v`` towards the top singular vectors of the weight."""
        check_int("steps", steps)
        for _ in range(steps):
            self.u.copy_(F.normalize(self.weight @ self.v, dim=0))
            self.v.copy_(F.normalize(self.weight.T @ self.u, dim=0))

    def sigma(self) -> torch.Tensor:
        """The spectral-norm estimate ``u^T W v`` (differentiable in ``W``)."""
        return self.u @ self.weight @ self.v

    def forward(self, x):
        if self.training:
            self.power_iteration()
        return F.linear(x, self.gamma / self.sigma() * self.weight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, power_steps: int = 20) -> "SigmaReparamLinear":
        """The same layer re-parametrised; ``gamma`` is set to ``sigma(W)`` so the outputs do not change."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
            layer.power_iteration(power_steps)
            layer.gamma.copy_(layer.sigma())
        return layer


def sigma_reparam(module: nn.Module, *, keep_outputs: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` (in place) by a :class:`SigmaReparamLinear` and
    return ``module`` (or the replacement, when ``module`` is itself an ``nn.Linear``).

    ``keep_outputs=True`` starts ``gamma`` at ``sigma(W)`` (a trained model keeps its outputs);
    otherwise ``gamma = 1``, the paper's initialisation for training from scratch.
    """
    if isinstance(module, nn.Linear) and not isinstance(module, SigmaReparamLinear):
        layer = SigmaReparamLinear.from_linear(module)
        if not keep_outputs:
            with torch.no_grad():
                layer.gamma.fill_(1.0)
        return layer
    for name, child in list(module.named_children()):
        replaced = sigma_reparam(child, keep_outputs=keep_outputs)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy ``-sum_j A_ij log A_ij`` over the queries of ``weights (B, H, Nq, Nk)``: ``(H,)``,
    averaged over the batch too. Zero weights (masked pairs) contribute 0."""
    if not isinstance(weights, torch.Tensor) or weights.ndim != 4:
        raise ValueError("weights must be a tensor of shape (batch, heads, queries, keys)")
    terms = torch.where(weights > 0, -weights * torch.log(weights.clamp_min(torch.finfo(weights.dtype).tiny)),
                        torch.zeros_like(weights))
    return terms.sum(-1).mean(dim=(0, 2))
