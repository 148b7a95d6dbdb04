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

import torch

from ..families.seer_decode import attended, decode_gate_loss
from ..registry import get
from .seer import after_rope, distil, gated_layers, measure_gates

MECHANISM = "seer_attention_r"


def distill_decode_gates(model, train_ids: torch.Tensor, *, context: int, batch: int = 16, lr: float = 1e-3,
                         minutes: float | None = 5.0, max_steps: int | None = None, pool: str = "max",
                         loss_from: float = 0.5, seed: int = 0, on_step=None) -> dict:
    """Train the decode gates of ``model`` in place; ``{"steps", "seconds", "losses"}``."""
    layers = gated_layers(model, MECHANISM)
    if not layers:
        raise ValueError("model has no seer_attention_r layers (build it with seer_model(..., mechanism="
                         "'seer_attention_r'))")
    settings = [{**get(MECHANISM).defaults, **layer.mechanism_params} for layer in layers]

    def loss_of(layer, q, k, gates):
        p = settings[layers.index(layer)]
        qr, kr = after_rope(layer, q, k)
        return decode_gate_loss(qr, kr, gates["gate_q"], gates["gate_k"], block_size=p["block_size"],
                                rope_base=p["rope_base"], pool=pool, gate_queries=q, gate_keys=k, loss_from=loss_from)

    return distil(model, layers, loss_of, dense={"top_k": context + 1, "threshold": 0.0}, train_ids=train_ids,
                  context=context, batch=batch, lr=lr, minutes=minutes, max_steps=max_steps, seed=seed,
                  on_step=on_step)


def decode_gate_quality(model, windows: torch.Tensor, *, batch: int = 16, rows_at_once: int = 256) -> dict:
    """Mean dense attention mass in the blocks the gates choose (recall, queries past the first block) and the
    share of the causal (query, key) pairs they read (density), over every gated layer. The dense attention is
    written out ``rows_at_once`` queries at a time (in float64: at 4096 tokens a whole window's would take 8 GB)."""
    layers = gated_layers(model, MECHANISM)
    kept_mass, density = [], []

    def measure(layer, q, k, gates):
        p = {**get(MECHANISM).defaults, **layer.mechanism_params}
        qr, kr = after_rope(layer, q, k)
        N = q.shape[2]
        rows = torch.arange(min(p["block_size"], N - 1), N, device=q.device)
        kept, dens = attended(qr, kr, rows, scale=None, block_size=p["block_size"], top_k=p["top_k"],
                              threshold=p["threshold"], rope_base=p["rope_base"], gate_q=gates["gate_q"],
                              gate_k=gates["gate_k"], gate_queries=q, gate_keys=k)
        keys = kr.repeat_interleave(qr.shape[1] // kr.shape[1], 1)
        mass = 0.0
        for r0 in range(0, len(rows), rows_at_once):
            part = rows[r0:r0 + rows_at_once]
            s = (qr[:, :, part] @ keys.transpose(-1, -2)).double() * qr.shape[-1] ** -0.5
            s = s.masked_fill(torch.arange(N, device=q.device) > part[:, None], float("-inf"))
            mass += float((s.softmax(-1) * kept[:, :, r0:r0 + rows_at_once]).sum())
        kept_mass.append(mass / kept.shape[:3].numel())
        density.append(dens)

    measure_gates(model, layers, measure, windows, batch)
    return {"kept_mass": round(sum(kept_mass) / len(kept_mass), 4), "density": round(sum(density) / len(density), 4)}
