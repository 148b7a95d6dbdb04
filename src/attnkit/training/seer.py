"""SeerAttention on a trained LM: swap its attention for gated block-sparse attention, then train the gates
by self-distillation with the base model frozen (Gao et al., "SeerAttention: Learning Intrinsic Sparse
Attention in Your LLMs").

:func:`seer_model` builds the same model with ``seer_attention`` layers and the base weights (only the
gates are new); :func:`distill_gates` trains the gates alone: every gated layer runs densely meanwhile
(all blocks kept, so the frozen model computes exactly what the base model does) and each gate is fitted to
its layer's dense attention (q and k after the layer's RoPE) pooled to blocks (``KL(target || gate)``, :func:`attnkit.families.seer
.distillation_loss`); :func:`gate_quality` measures the attention mass the gates keep and the density.
"""
from __future__ import annotations

import time

import torch

from ..families.seer import block_mask, distillation_loss, distillation_target, seer_selection
from ..models import DecoderLM, ModelConfig
from ..models.config import mixer_spec
from ..nn import Attention
from .lm import sample_batch


def seer_model(base: DecoderLM, *, block_size: int, top_k: int, mechanism: str = "seer_attention") -> DecoderLM:
    """``base`` with every softmax layer replaced by ``mechanism`` (``seer_attention`` or its decode gate
    ``seer_attention_r``; same weights, new gates; frozen but the gates)."""
    config = base.config.to_dict()
    mixers = {}
    for letter, mixer in config["mixers"].items():
        spec = mixer_spec(mixer, config["rope"])
        if spec.get("mechanism") != "softmax":
            raise ValueError(f"layer letter {letter!r} runs {mixer!r}: SeerAttention gates softmax layers only")
        mixers[letter] = {"mechanism": mechanism, "rope": spec["rope"], "block_size": block_size,
                          "top_k": top_k, **spec["params"]}
    model = DecoderLM(ModelConfig(**{**config, "mixers": mixers})).to(next(base.parameters()).device)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(".inputs." not in name for name in missing):
        raise ValueError(f"base weights do not fit the gated model: missing {missing}, unexpected {unexpected}")
    for name, p in model.named_parameters():
        p.requires_grad_(".inputs." in name)
    return model


def gated_layers(model, mechanism: str = "seer_attention") -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention) and m.mechanism == mechanism]


def after_rope(layer, q, k):
    """``q, k`` as ``layer`` attends with them in a one-shot call (the gate's input module sees them before the
    layer's RoPE)."""
    return layer.rope.apply(q, k, q_offset=0, k_offset=0) if layer.rope is not None else (q, k)


def capture_gates(layers, on_call):
    """Call ``on_call(layer, q, k, gates)`` whenever a gated layer's gate runs, with the q and k the gate reads
    (before the layer's RoPE: see :func:`after_rope`); returns the hook handles."""
    return [layer.inputs.register_forward_hook(lambda mod, args, out, layer=layer: on_call(layer, args[1], args[2], out))
            for layer in layers]


def measure_gates(model, layers, on_call, windows: torch.Tensor, batch: int) -> None:
    """Run ``model`` over ``windows`` in batches without gradients, ``on_call(layer, q, k, gates)`` at every gate."""
    handles = capture_gates(layers, on_call)
    try:
        with torch.no_grad():
            for s in range(0, len(windows), batch):
                model(windows[s : s + batch, :-1].to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()


def distil(model, layers, loss_of, *, dense: dict, train_ids: torch.Tensor, context: int, batch: int, lr: float,
           minutes: float | None, max_steps: int | None, seed: int, on_step) -> dict:
    """The self-distillation loop both gates share: ``layers`` run with ``dense`` parameters (every block read,
    so the frozen model computes what the base model does); ``loss_of(layer, q, k, gates)`` returns a layer's
    loss; only the trainable parameters (the gates) learn. ``{"steps", "seconds", "losses"}``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    saved = [layer.mechanism_params for layer in layers]
    for layer in layers:
        layer.mechanism_params = {**layer.mechanism_params, **dense}
    losses_now: list[torch.Tensor] = []
    handles = capture_gates(layers, lambda layer, q, k, gates: losses_now.append(loss_of(layer, q, k, gates)))
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


def distill_gates(model, train_ids: torch.Tensor, *, context: int, batch: int = 16, lr: float = 1e-3,
                  minutes: float | None = 5.0, max_steps: int | None = None, pool: str = "max", seed: int = 0,
                  on_step=None) -> dict:
    """Train the gates of ``model`` (from :func:`seer_model`) in place; ``{"steps", "seconds", "losses"}``."""
    layers = gated_layers(model)
    if not layers:
        raise ValueError("model has no seer_attention layers (build it with seer_model)")
    blocks = [layer.mechanism_params["block_size"] for layer in layers]

    def loss_of(layer, q, k, gates):
        return distillation_loss(*after_rope(layer, q, k), gates["gate_q"], gates["gate_k"],
                                 block_size=blocks[layers.index(layer)], pool=pool)

    return distil(model, layers, loss_of, dense={"top_k": context, "threshold": 0.0}, train_ids=train_ids,
                  context=context, batch=batch, lr=lr, minutes=minutes, max_steps=max_steps, seed=seed,
                  on_step=on_step)


def gate_quality(model, windows: torch.Tensor, *, batch: int = 16) -> dict:
    """Mean dense attention mass inside the kept blocks (recall) and the kept share of causal pairs (density)."""
    layers = gated_layers(model)
    kept_mass, density = [], []

    def measure(layer, q, k, gates):
        p = layer.mechanism_params
        q, k = after_rope(layer, q, k)
        mass = distillation_target(q, k, block_size=p["block_size"], pool="sum")
        kept = block_mask(q, k, gates["gate_q"], gates["gate_k"], p["block_size"], p["top_k"], p["threshold"], True)
        kept_mass.append((mass * kept).sum(-1).mean().item())
        sel = seer_selection(q, k, gate_q=gates["gate_q"], gate_k=gates["gate_k"], block_size=p["block_size"],
                             top_k=p["top_k"], threshold=p["threshold"])
        density.append(sel.density(causal=True))

    measure_gates(model, layers, measure, windows, batch)
    return {"kept_mass": round(sum(kept_mass) / len(kept_mass), 4), "density": round(sum(density) / len(density), 4)}
