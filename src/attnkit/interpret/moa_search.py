"""MoA's automatic configuration search: Fu, Huang, Ning, et al., "MoA: Mixture of Sparse Attention
for Automatic Large Language Model Compression" (2024).

MoA gives every head its own *elastic* sliding window: head ``h`` attends to the last
``floor(alpha_h + beta_h * n)`` keys when ``n`` tokens have been seen (the ``moa`` mechanism,
``attnkit.masks.window.elastic_windows``). This module chooses the rules, as the paper does:

1. **Profile.** On calibration text, record every head's attention matrix ``A`` and the gradient
   ``G = dL/dA`` of the model's loss (:func:`profile`, through ``attnkit.capture(grad=True)``).
   Masking entry ``(i, j)`` and renormalising the row moves ``A_ij -> 0`` and
   ``A_in -> A_in / (1 - A_ij)``; to first order the loss changes by the *attention influence*

       dL_ij = -A_ij (G_ij - sum_n A_in G_in) / (1 - A_ij)        (:func:`attention_influence`)

   A query with a single visible key (``A_ij = 1``) would lose its whole output instead:
   ``dL_ij = -A_ij G_ij``. The profile is ``|dL_ij|`` summed over the calibration sequences (the
   authors' profiler takes the magnitude per sequence: signed first-order changes of many entries
   cancel, and would make dropping look free).
2. **Candidate rules.** Each ``(alpha, beta)`` of a grid (:func:`candidate_rules`) is scored per
   head and profiled length ``N``: its loss is the sum of the influence over the causal pairs the
   rule drops (:func:`rule_losses`), its cost the share of causal pairs it keeps
   (:func:`rule_densities`).
3. **Optimise.** One rule per head, minimising the loss summed over heads and profiled lengths
   (the paper's single-objective problem ``min sum(Z x)``) subject to the mean density over all
   heads at ``budget_length`` being at most ``budget``. This is a multiple-choice knapsack; the
   paper hands it to a MILP solver, :func:`search` solves it exactly by dynamic programming over
   the density in steps of ``1 / resolution`` per head (densities rounded up, so the plan never
   exceeds the budget).

Differences from the paper: one density constraint (at ``budget_length``, the longest profiled
length unless given) instead of one per length, and no Pareto front over lengths followed by a
validation pick; the densities of the plan at every profiled length are reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..capture import capture
from ..masks.window import elastic_windows


def attention_influence(weights: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``dL_ij`` for every entry of ``weights`` (``(..., Nq, Nk)``, rows summing to one) given
    ``grad = dL/dweights`` of the same shape: the first-order loss change of dropping that entry."""
    if not isinstance(weights, torch.Tensor) or not isinstance(grad, torch.Tensor):
        raise TypeError("weights and grad must be tensors")
    if weights.shape != grad.shape:
        raise ValueError(f"grad must have the shape of weights {tuple(weights.shape)}, got {tuple(grad.shape)}")
    A, G = weights.double(), grad.double()
    through_row = (A * G).sum(-1, keepdim=True)
    alone = A >= 1 - 1e-12
    rest = torch.where(alone, torch.ones_like(A), 1 - A)
    return torch.where(alone, -A * G, -A * (G - through_row) / rest)


def profile(model: torch.nn.Module, batches, loss) -> dict[str, torch.Tensor]:
    """Attention influence magnitudes ``|dL_ij|`` summed over sequences, ``{module: (heads, N, N)}``, of every
    attention call of ``model``.

    ``batches``: the calibration inputs, all of one length ``N``; ``loss(model, batch)`` runs the
    model on one and returns a scalar. Only the attention weights get gradients (the parameters'
    ``.grad`` are left alone)."""
    totals: dict[str, torch.Tensor] = {}
    for batch in batches:
        with capture(model, grad=True) as rec:
            value = loss(model, batch)
        if not len(rec):
            raise ValueError("loss(model, batch) made no attnkit.attention call to profile")
        weights = rec.weights()
        grads = torch.autograd.grad(value, weights, allow_unused=True)
        for record, w, g in zip(rec, weights, grads):
            if g is None:
                continue
            name = record.module or f"call{len(totals)}"
            influence = attention_influence(w.detach(), g).abs().sum(0)
            totals[name] = totals[name] + influence if name in totals else influence
    if not totals:
        raise ValueError("no attention weights received a gradient from the loss")
    return totals


def candidate_rules(lengths, alphas=None, betas=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)):
    """The ``(alpha, beta)`` grid: ``alphas`` default to powers of two from 4 to the longest length."""
    longest = max(lengths)
    if alphas is None:
        alphas = [2 ** e for e in range(2, math.ceil(math.log2(longest)) + 1)]
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, int) or a < 1:
            raise ValueError(f"alphas must be ints >= 1, got {a!r}")
    for b in betas:
        if not 0 <= b < 1:
            raise ValueError(f"betas must lie in [0, 1), got {b!r}")
    return [(int(a), float(b)) for a in alphas for b in betas]


def _rule_masks(n: int, rules) -> torch.Tensor:
    """``(rules, n, n)`` bool: the causal pairs each rule keeps (exactly the ``moa`` mechanism's mask)."""
    q = torch.arange(n)[:, None]
    kv = torch.arange(n)[None, :]
    mask = elastic_windows(len(rules), [a for a, _ in rules], [b for _, b in rules])
    heads = torch.arange(len(rules))[:, None, None]
    return mask.fn(0, heads, q, kv)


def rule_densities(n: int, rules) -> torch.Tensor:
    """``(rules,)``: the share of the ``n (n + 1) / 2`` causal pairs each rule keeps."""
    return _rule_masks(n, rules).sum((-1, -2)).double() / (n * (n + 1) / 2)


def rule_losses(influence: torch.Tensor, rules) -> torch.Tensor:
    """``(heads, rules)``: the summed influence of the causal pairs each rule drops, per head
    (``influence``: ``(heads, N, N)``)."""
    if influence.ndim != 3 or influence.shape[-1] != influence.shape[-2]:
        raise ValueError(f"influence must be (heads, N, N), got {tuple(influence.shape)}")
    n = influence.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    dropped = (causal & ~_rule_masks(n, rules)).double()
    return torch.einsum("hij,rij->hr", influence.double(), dropped)


@dataclass
class MoAPlan:
    """The chosen rule of every head: ``rules[module]`` is a list of ``(alpha, beta)``, one per head."""

    rules: dict[str, list[tuple[int, float]]]
    budget: float
    budget_length: int
    density: dict[int, float] = field(default_factory=dict)  # mean density over heads, per profiled length
    loss: float = 0.0  # the predicted loss increase, summed over profiled lengths

    def params(self, module: str) -> dict:
        """The ``moa`` mechanism's parameters for one attention module: ``{"alphas": ..., "betas": ...}``."""
        chosen = self.rules[module]
        return {"alphas": tuple(a for a, _ in chosen), "betas": tuple(b for _, b in chosen)}


def search(profiles: dict[int, dict[str, torch.Tensor]], budget: float, *, rules=None, budget_length: int | None = None,
           resolution: int = 1000) -> MoAPlan:
    """Choose one elastic rule per head (see the module docstring).

    ``profiles``: ``{N: {module: influence (heads, N, N)}}`` (what :func:`profile` returns, per
    calibration length), the same modules and head counts at every length. ``budget``: the mean
    density over all heads, in (0, 1], at ``budget_length`` (default the longest ``N``).
    ``rules``: the candidates (default :func:`candidate_rules`)."""
    if not isinstance(profiles, dict) or not profiles:
        raise ValueError("profiles must be a non-empty dict {length: {module: influence}}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a density in (0, 1], got {budget!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an int >= 1, got {resolution!r}")
    lengths = sorted(profiles)
    budget_length = lengths[-1] if budget_length is None else budget_length
    if budget_length not in profiles:
        raise ValueError(f"budget_length must be one of the profiled lengths {lengths}, got {budget_length!r}")
    modules = list(profiles[budget_length])
    heads = [profiles[budget_length][m].shape[0] for m in modules]
    for n in lengths:
        if list(profiles[n]) != modules or [profiles[n][m].shape[0] for m in modules] != heads:
            raise ValueError(f"profiles at length {n} hold other modules or head counts than at {budget_length}")
    rules = candidate_rules(lengths) if rules is None else [(int(a), float(b)) for a, b in rules]
    losses = sum(torch.cat([rule_losses(profiles[n][m], rules) for m in modules]) for n in lengths)  # (all heads, R)
    cost = torch.ceil(rule_densities(budget_length, rules) * resolution - 1e-9).long()  # (R,)
    capacity = math.floor(budget * sum(heads) * resolution + 1e-9)
    if int(cost.min()) * sum(heads) > capacity:
        raise ValueError(f"budget {budget} is below the sparsest candidate rule's density "
                         f"{float(cost.min()) / resolution:.4f} at length {budget_length}")
    choice = _knapsack(losses, cost, capacity)
    flat = [rules[r] for r in choice]
    plan_rules, start = {}, 0
    for m, h in zip(modules, heads):
        plan_rules[m] = flat[start : start + h]
        start += h
    density = {n: float(rule_densities(n, rules)[choice].mean()) for n in lengths}
    return MoAPlan(plan_rules, float(budget), budget_length, density, float(losses[torch.arange(len(choice)), choice].sum()))


def _knapsack(losses: torch.Tensor, cost: torch.Tensor, capacity: int) -> list[int]:
    """Exact multiple-choice knapsack: one rule per row of ``losses`` (heads, R), total ``cost`` <= capacity."""
    best = torch.full((capacity + 1,), math.inf, dtype=torch.float64)
    best[0] = 0.0  # best[c]: the least loss of the heads so far at total cost exactly c
    picks = []
    for row in losses:
        new = torch.full_like(best, math.inf)
        pick = torch.zeros(capacity + 1, dtype=torch.long)
        for r in range(len(cost)):
            c = int(cost[r])
            if c > capacity:
                continue
            candidate = torch.full_like(best, math.inf)
            candidate[c:] = best[: capacity + 1 - c] + row[r]
            better = candidate < new
            new = torch.where(better, candidate, new)
            pick = torch.where(better, torch.full_like(pick, r), pick)
        best = new
        picks.append(pick)
    c = int(torch.argmin(best))
    choice = []
    for pick in reversed(picks):
        r = int(pick[c])
        choice.append(r)
        c -= int(cost[r])
    return choice[::-1]
