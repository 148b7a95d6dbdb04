"""SeerAttention-R on a trained LM: its decode gates trained by self-distillation with the base model frozen
(Gao et al., "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning").

:func:`attnkit.training.seer.seer_model` with ``mechanism="seer_attention_r"`` builds the gated model (base
weights, new gates); :func:`distill_decode_gates` trains the gates alone. Meanwhile every gated layer reads
every block (the frozen model computes exactly what the base model does) and each gate is fitted to its
layer's dense attention: ``KL(T || S)`` per query over the past blocks
(:func:`attnkit.families.seer_decode.decode_gate_loss`; the target from the layer's q and k after its RoPE,
the gate reading them before it, as the paper's ``Q_nope``, ``K_nope``), on the later half of each window
(the authors' ``loss_slice_ratio`` 0.5). :func:`decode_gate_quality` measures the attention mass the gates'
blocks hold (recall) and the share of the causal pairs they read (density).
"""
from __future__ import annotations

import time

import torch

from ..families.seer_decode import attended, decode_gate_loss
from ..registry import get
from .lm import sample_batch
from .seer import gated_layers

MECHANISM = "seer_attention_r"


def _after_rope(layer, q, k):
    return layer.rope.apply(q, k, q_offset=0, k_offset=0) if layer.rope is not None else (q, k)


def _capture(layers, on_call):
    """Call ``on_call(layer, q, k, gates)`` (q, k before the layer's RoPE) whenever a gated layer's gate runs."""
    return [layer.inputs.register_forward_hook(lambda mod, args, out, layer=layer: on_call(layer, args[1], args[2], out))
            for layer in layers]


def distill_decode_gates(model, train_ids: torch.Tensor, *, context: int, batch: int = 16, lr: float = 1e-3,
                         minutes: float | None = 5.0, max_steps: int | None = None, pool: str = "max",
                         loss_from: float = 0.5, seed: int = 0, on_step=None) -> dict:
    """Train the decode gates of ``model`` in place; ``{"steps", "seconds", "losses"}``."""
    layers = gated_layers(model, MECHANISM)
    if not layers:
        raise ValueError("model has no seer_attention_r layers (build it with seer_model(..., mechanism="
                         "'seer_attention_r'))")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    saved = [layer.mechanism_params for layer in layers]
    settings = [{**get(MECHANISM).defaults, **p} for p in saved]
    for layer in layers:  # read every block: the frozen model runs exactly as the dense base model
        layer.mechanism_params = {**layer.mechanism_params, "top_k": context + 1, "threshold": 0.0}

    def loss_of(layer, q, k, gates):
        p = settings[layers.index(layer)]
        qr, kr = _after_rope(layer, q, k)
        losses_now.append(decode_gate_loss(qr, kr, gates["gate_q"], gates["gate_k"], block_size=p["block_size"],
                                           rope_base=p["rope_base"], pool=pool, gate_queries=q, gate_keys=k,
                                           loss_from=loss_from))

    losses_now: list[torch.Tensor] = []
    handles = _capture(layers, loss_of)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    losses, step, start = [], 0, time.perf_counter()
    model.train()
    try:
        while (max_steps is None or step < max_steps) and (minutes is None or time.perf_counter() - start < 60 * minutes):
            losses_now.clear()
            model(sample_batch(train_ids, context, batch, g)[:, :-1].to(device))
            loss = torch.stack(losses_now).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if on_step is not None:
                on_step(step, losses[-1], time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()
        for layer, params_before in zip(layers, saved):
            layer.mechanism_params = params_before
        model.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "losses": losses}


def decode_gate_quality(model, windows: torch.Tensor, *, batch: int = 16) -> dict:
    """Mean dense attention mass in the blocks the gates choose (recall, queries past the first block) and the
    share of the causal (query, key) pairs they read (density), over every gated layer."""
    layers = gated_layers(model, MECHANISM)
    kept_mass, density = [], []

    def measure(layer, q, k, gates):
        p = {**get(MECHANISM).defaults, **layer.mechanism_params}
        qr, kr = _after_rope(layer, q, k)
        N = q.shape[2]
        rows = torch.arange(min(p["block_size"], N - 1), N, device=q.device)
        kept, dens = attended(qr, kr, rows, scale=None, block_size=p["block_size"], top_k=p["top_k"],
                              threshold=p["threshold"], rope_base=p["rope_base"], gate_q=gates["gate_q"],
                              gate_k=gates["gate_k"], gate_queries=q, gate_keys=k)
        keys = kr.repeat_interleave(qr.shape[1] // kr.shape[1], 1)
        s = (qr[:, :, rows] @ keys.transpose(-1, -2)).double() * qr.shape[-1] ** -0.5
        s = s.masked_fill(torch.arange(N, device=q.device) > rows[:, None], float("-inf"))
        kept_mass.append((s.softmax(-1) * kept).sum(-1).mean().item())
        density.append(dens)

    handles = _capture(layers, measure)
    try:
        with torch.no_grad():
            for s in range(0, len(windows), batch):
                model(windows[s : s + batch, :-1].to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return {"kept_mass": round(sum(kept_mass) / len(kept_mass), 4), "density": round(sum(density) / len(density), 4)}
