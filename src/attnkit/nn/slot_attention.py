"""Slot Attention, from Locatello et al., "Object-Centric Learning with Slot Attention" (2020).

``num_slots`` slots compete for the input features over ``iters`` rounds
(Algorithm 1 of the paper):

    inputs = LayerNorm(inputs);  k, v = W_k inputs, W_v inputs
    slots ~ N(mu, diag(sigma))                       (learned mu, sigma)
    repeat iters times:
        prev = slots;  slots = LayerNorm(slots)
        attn = softmax over *slots* of  (W_q slots) k^T / sqrt(D)     # competition
        attn = (attn + eps) / sum over inputs of (attn + eps)          # weighted mean
        updates = attn^T v
        slots = GRU(state=prev, input=updates)
        slots = slots + MLP(LayerNorm(slots))

The softmax runs over the query axis (slots), not over keys, so this is not a
:func:`attnkit.attention` call. The output is invariant to permuting the inputs
and equivariant to permuting the initial slots.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validation import check_int, check_tokens
from .dropout import check_dropout, drop_weights
from .factory import factory_kwargs


@factory_kwargs
class SlotAttention(nn.Module):
    """Slot Attention (Locatello et al.): ``num_slots`` slots compete for the inputs over
    ``iters`` rounds of attention normalised over slots. See the module docstring. ``dropout``: dropout on the attention weights while training (:mod:`attnkit.nn.dropout`),
    on the weights of each slot's weighted mean (the returned attention is not dropped).
    """

    def __init__(self, num_slots: int, dim: int, *, input_dim: int | None = None, iters: int = 3,
                 hidden_dim: int = 128, eps: float = 1e-8, dropout: float = 0.0):
        super().__init__()
        self.dropout = check_dropout(dropout)
        input_dim = dim if input_dim is None else input_dim
        for name, value in (("num_slots", num_slots), ("dim", dim), ("input_dim", input_dim), ("iters", iters),
                            ("hidden_dim", hidden_dim)):
            check_int(name, value)
        self.num_slots, self.dim, self.input_dim, self.iters, self.eps = num_slots, dim, input_dim, iters, eps
        self.slots_mu = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.slots_log_sigma = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_inputs, self.norm_slots, self.norm_mlp = nn.LayerNorm(input_dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(input_dim, dim, bias=False)
        self.to_v = nn.Linear(input_dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def initial_slots(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Slots sampled from the learned Gaussian ``N(mu, sigma^2)``: ``(batch, num_slots, dim)``."""
        noise = torch.randn(batch, self.num_slots, self.dim, generator=generator, dtype=self.slots_mu.dtype)
        return self.slots_mu + self.slots_log_sigma.exp() * noise.to(self.slots_mu.device)

    def forward(self, inputs, slots=None, *, mask=None, return_attention=False):
        """``inputs (B, N, input_dim)`` -> slots ``(B, num_slots, dim)`` (and the last attention ``(B, N, slots)``).

        ``slots`` gives the initial slots (default: sampled); ``mask (B, N)``
        (True = real input) excludes padded inputs from every slot's update.
        """
        check_tokens("inputs", inputs, self.input_dim)
        B, N, _ = inputs.shape
        if slots is None:
            slots = self.initial_slots(B)
        elif not isinstance(slots, torch.Tensor) or tuple(slots.shape) != (B, self.num_slots, self.dim):
            raise ValueError(f"slots must have shape (batch, num_slots, dim) = {(B, self.num_slots, self.dim)}, "
                             f"got {tuple(getattr(slots, 'shape', ()))}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (B, N)):
            raise ValueError(f"mask must be a boolean (batch, num_inputs) = {(B, N)} tensor (True = real input)")
        x = self.norm_inputs(inputs)
        k, v = self.to_k(x), self.to_v(x)
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            attn = torch.einsum("bnd,bkd->bnk", k, q).mul(self.dim ** -0.5).softmax(dim=-1) + self.eps
            if mask is not None:
                attn = attn * mask[..., None]
            updates = torch.einsum("bnk,bnd->bkd", drop_weights(self, attn / attn.sum(dim=1, keepdim=True)), v)
            slots = self.gru(updates.reshape(-1, self.dim), prev.reshape(-1, self.dim)).view(B, self.num_slots, -1)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return (slots, attn) if return_attention else slots
