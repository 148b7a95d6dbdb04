"""Zoology's MQAR model and its training loop, built on :func:`attnkit.attention`.

The model of "Zoology: Measuring and Improving Recall in Efficient Language
Models" as its Based-paper MQAR sweep configures it (Zoology's
``experiments/arxiv24_based_figure2``): token embedding without position
embeddings, two pre-norm blocks with no MLP, a final norm and an LM head tied
to the embedding, weights initialised N(0, 0.02). Block 0's mixer is Zoology's
``BaseConv`` (a gated short convolution, kernel 3: ``conv(u) * W u + u``), which
gives every token its neighbours and the order of the sequence; block 1's mixer
is the mechanism under test: q, k, v projections, ``attnkit.attention(...,
causal=True)`` and an output projection.

A mechanism's extra tensor inputs (gates, betas) come from the mechanism's input
module (:mod:`attnkit.nn.inputs`), else from learned projections
(:class:`attnkit.nn.inputs.LearnedTensorInputs`). ``qkv_conv`` and ``gated_norm`` add the two
pieces of the Gated DeltaNet layer ("Gated Delta Networks", as fla and Zoology's
``gated_delta_net`` build it) around the operator: a short causal convolution
(kernel 4, no bias) with SiLU on each of q, k, v, and an RMS norm of the output gated by
``silu(W_g x)``. With ``gate_before_norm`` the gate comes first, ``rms_norm(o * silu(W_g x))``: the
Mamba-2 block's gated norm ("Transformers are SSMs", Dao & Gu), whose x, B, C (v, k, q) also pass a
short convolution and SiLU.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .. import attention, spec as get_spec
from ._mqar_data import IGNORE
from ..nn.inputs import LearnedTensorInputs, has_input_module, input_module


class ShortConv(nn.Module):
    """Causal depthwise convolution over the sequence: ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, dim: int, size: int, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, size, groups=dim, padding=size - 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class BaseConv(nn.Module):
    """Zoology's ``BaseConv``: ``y = conv(u) * (W u + b) + u`` with a short causal convolution."""

    def __init__(self, dim: int, size: int = 3):
        super().__init__()
        self.conv = ShortConv(dim, size)
        self.proj = nn.Linear(dim, dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.conv(u) * self.proj(u) + u


class Mixer(nn.Module):
    """q/k/v projections, ``attnkit.attention`` with the mechanism, output projection."""

    def __init__(self, mechanism: str, params: dict, d_model: int, heads: int, qk_dim: int, seq_len: int, *,
                 qkv_conv: bool = False, gated_norm: bool = False, gate_before_norm: bool = False):
        super().__init__()
        if gate_before_norm and not gated_norm:
            raise ValueError("gate_before_norm: orders the gated norm's gate and norm, so it needs gated_norm=True")
        self.gate_before_norm = gate_before_norm
        spec = get_spec(mechanism)
        self.mechanism, self.params, self.heads, self.qk_dim = mechanism, dict(params), heads, qk_dim
        self.v_dim = d_model // heads
        self.q = nn.Linear(d_model, heads * qk_dim)
        self.k = nn.Linear(d_model, heads * qk_dim)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        qkv_dims = (heads * qk_dim, heads * qk_dim, d_model)
        self.convs = nn.ModuleList(ShortConv(n, 4, bias=False) for n in qkv_dims) if qkv_conv else None
        self.gate = nn.Linear(d_model, d_model) if gated_norm else None
        if has_input_module(mechanism):  # the mechanism's own layer for its tensor inputs (docs/design.md)
            self.inputs = input_module(mechanism, dim=d_model, heads=heads, kv_heads=heads, head_dim=qk_dim,
                                       v_dim=self.v_dim, params={k: v for k, v in params.items() if k != "form"})
        else:
            self.inputs = LearnedTensorInputs(spec, d_model, heads, heads, qk_dim, self.v_dim, seq_len)

    @torch.no_grad()
    def tensor_inputs(self, seq_len: int) -> dict:
        """The tensor inputs this layer gives its mechanism for one sequence of ``seq_len`` tokens (a state
        size counts those a decode cache holds, e.g. NSA's branch keys and values)."""
        p = self.q.weight
        x = torch.zeros(1, seq_len, self.v.in_features, dtype=p.dtype, device=p.device)
        q = torch.zeros(1, self.heads, seq_len, self.qk_dim, dtype=p.dtype, device=p.device)
        v = torch.zeros(1, self.heads, seq_len, self.v_dim, dtype=p.dtype, device=p.device)
        return self.inputs(x, q, q, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.convs is not None:
            q, k, v = (F.silu(conv(t)) for conv, t in zip(self.convs, (q, k, v)))
        q = q.view(B, L, self.heads, self.qk_dim).transpose(1, 2)
        k = k.view(B, L, self.heads, self.qk_dim).transpose(1, 2)
        v = v.view(B, L, self.heads, self.v_dim).transpose(1, 2)
        o = attention(q, k, v, self.mechanism, causal=True, **self.params, **self.inputs(x, q, k, v)).transpose(1, 2)
        if self.gate is not None:  # RMS norm per head, gated by silu(W_g x) (after the norm, or before it)
            gate = F.silu(self.gate(x)).view(B, L, self.heads, self.v_dim)
            o = F.rms_norm(o * gate, (self.v_dim,)) if self.gate_before_norm else F.rms_norm(o, (self.v_dim,)) * gate
        return self.out(o.reshape(B, L, -1))


class ResidualMixers(nn.Module):
    """Embedding, the given mixer blocks (pre-norm, residual, no MLP), norm, tied LM head; Zoology's init."""

    def __init__(self, vocab: int, d_model: int, mixers: list[nn.Module]):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in mixers)
        self.mixers = nn.ModuleList(mixers)
        self.final = nn.LayerNorm(d_model)
        for m in self.modules():  # Zoology's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.final(x) @ self.embed.weight.T


class MQARModel(ResidualMixers):
    """Embedding, [BaseConv block, mechanism block] (pre-norm, residual, no MLP), norm, tied LM head."""

    def __init__(self, mechanism: str, params: dict, vocab: int, d_model: int, seq_len: int, heads: int = 1,
                 qk_dim: int | None = None, **layer):
        super().__init__(vocab, d_model, [BaseConv(d_model),
                                          Mixer(mechanism, params, d_model, heads, qk_dim or d_model // heads,
                                                seq_len, **layer)])


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 250) -> float:
    model.eval()
    right = total = 0
    for s in range(0, len(inputs), batch):
        y = targets[s:s + batch]
        pred = model(inputs[s:s + batch]).argmax(-1)
        keep = y != IGNORE
        right += int((pred[keep] == y[keep]).sum())
        total += int(keep.sum())
    model.train()
    return right / max(total, 1)


def training_step(model: nn.Module, opt: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """One optimiser step on a batch; returns the loss. A non-finite loss is returned without a step."""
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    if not torch.isfinite(loss):
        return loss.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW; parameters a layer marks ``_no_weight_decay`` (fla's convention, e.g. the Gated DeltaNet
    decay's ``A_log`` and ``dt_bias``) get no weight decay."""
    params = list(model.parameters())
    keep = [p for p in params if getattr(p, "_no_weight_decay", False)]
    decayed = [p for p in params if not getattr(p, "_no_weight_decay", False)]
    return torch.optim.AdamW([{"params": decayed}, {"params": keep, "weight_decay": 0.0}], lr=lr,
                             weight_decay=weight_decay)


def train(model: nn.Module, train_data, test_data, *, lr: float, epochs: int, batch: int = 64,
          weight_decay: float = 0.1, stop_at: float = 0.99, seed: int = 0) -> dict:
    """AdamW (:func:`optimizer`) with a cosine schedule; test accuracy after every epoch.

    ``seconds`` is the wall time, ``cpu_seconds`` this process's CPU time (on a shared machine the
    work done, without the waiting). The returned ``status`` says how training ended: ``solved``
    (test accuracy reached ``stop_at``: Zoology's early stop), ``epochs`` (all epochs run), or
    ``diverged`` (a non-finite loss; accuracy is the best before it).
    """
    inputs, targets = train_data
    steps_per_epoch = math.ceil(len(inputs) / batch)
    opt = optimizer(model, lr, weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    best, t0, cpu0, status, history = 0.0, time.perf_counter(), time.process_time(), "epochs", []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(inputs), generator=g)
        total = 0.0
        for s in range(0, len(inputs), batch):
            idx = order[s:s + batch]
            loss = training_step(model, opt, inputs[idx], targets[idx])
            if not math.isfinite(loss):
                status = "diverged"
                break
            sched.step()
            total += loss
        if status == "diverged":
            break
        acc = accuracy(model, *test_data)
        best = max(best, acc)
        history.append([round(total / steps_per_epoch, 3), round(acc, 3)])
        if best >= stop_at:
            status = "solved"
            break
    return {"accuracy": best, "epochs": epoch, "status": status, "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "history": history}
