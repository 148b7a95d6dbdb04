"""Quality against density of the training-free methods on a trained LM, prefill and decode apart, over seeds.

The Sparse Frontier's measurement at the scale of a small model: each method is
swapped into every attention layer of an LM trained dense, at a few settings from
dense-ish to very sparse, and scored on held-out windows of ``n`` tokens:

- **prefill**: the whole window runs one-shot through the model with the method;
  the loss of its last ``score`` positions (whose attention the method chose) is
  compared with the dense model's loss on the same positions;
- **decode**: the first ``n - score`` tokens run densely (through the method with
  ``top_k`` covering every key, which is dense attention and gives the method its
  state), the last ``score`` tokens continue from that state with the method (one
  incremental call).

Quality is ``exp(loss_dense - loss_method)`` (1.0 = no loss). Each seed draws its
own ``windows`` random windows of held-out text (HyperAttention's own seed follows
it); the report gives the mean over seeds and a 95% t-interval. Density is the
share of causal (query, key) pairs attended: for prefill measured by
:func:`~attnkit.builders.estimated_sparse.selection_report` on the q, k, v of each
layer for the seed's first window (mean over layers), for decode counted from the
keys each scored position reads.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

def sweeps(n: int) -> dict[str, tuple[str, list[dict]]]:
    """Method -> (phase, settings from dense-ish to sparse), sized for windows of ``n`` tokens (16 blocks)."""
    b = max(4, n // 16)
    return {
        "block_topk": ("prefill", [{"block": b, "top_k": t} for t in (12, 8, 4, 2)]),
        "hip": ("prefill", [{"block": b, "top_k": t} for t in (12, 8, 4, 2)]),
        "xattention": ("prefill", [{"block": b, "stride": max(1, b // 4), "threshold": t} for t in (0.99, 0.95, 0.9, 0.7)]),
        "flexprefill": ("prefill", [{"block": b, "gamma": g} for g in (0.99, 0.95, 0.9, 0.7)]),
        "vertical_slash": ("prefill", [{"vertical": n // f, "slash": n // f, "sinks": 4, "local": b, "block": b}
                                       for f in (2, 4, 8, 16)]),
        "sample_attention": ("prefill", [{"alpha": a, "window_ratio": 1 / 16, "block": b} for a in (0.99, 0.95, 0.9, 0.7)]),
        "anchor_attention": ("prefill", [{"block": b, "init": b // 2, "theta": t} for t in (8.0, 4.0, 2.0, 1.0)]),
        "hyper_attention": ("prefill", [{"block": n // f, "samples": n // f, "min_len": n // 4, "lsh_bits": 4}
                                        for f in (4, 8, 16, 32)]),
        "quest": ("decode", [{"page": b // 2, "top_k": t} for t in (16, 8, 4, 2)]),
        "adamas": ("decode", [{"top_k": n // f} for f in (2, 4, 8, 16)]),
    }


SWEEPS = sweeps(256)


def windows(held: torch.Tensor, n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``n + 1`` held-out tokens (inputs and next-token targets)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, held.numel() - n - 1, (count,), generator=g).tolist()
    return torch.stack([held[s:s + n + 1] for s in starts])


def with_mechanism(model, mechanism: str, params: dict):
    """A copy of ``model`` whose every attention layer runs ``mechanism`` with ``params``."""
    from ..models import DecoderLM

    mixers = {name: {"mechanism": mechanism, **params} for name in model.config.mixers}
    other = DecoderLM(dataclasses.replace(model.config, mixers=mixers)).to(next(model.parameters()).device)
    other.load_state_dict(model.state_dict())
    return other.eval()


@torch.no_grad()
def scored_loss(first, second, batch: torch.Tensor, score: int, phase: str) -> float:
    """Mean next-token loss of the last ``score`` positions: one-shot through ``first`` (prefill), or ``first``
    over the prompt and ``second`` continuing from its state (decode)."""
    x, y = batch[:, :-1], batch[:, 1:]
    if phase == "prefill":
        logits = first(x)[:, -score:]
    else:
        _, state = first(x[:, :-score], return_state=True)
        logits, _ = second(x[:, -score:], state=state, return_state=True)
    return float(F.cross_entropy(logits.flatten(0, 1), y[:, -score:].flatten()))


def decode_density(method: str, params: dict, n: int, score: int) -> float:
    """Share of the keys the last ``score`` positions of ``n`` read."""
    pos = torch.arange(n - score, n)
    if method == "quest":
        read = (pos % params["page"] + 1 + (pos // params["page"]).clamp(max=params["top_k"] - 1) * params["page"])
    else:
        read = (pos + 1).clamp(max=params["top_k"])
    return float((read / (pos + 1)).mean())


@torch.no_grad()
def prefill_density(model, batch: torch.Tensor, method: str, params: dict) -> float:
    from ..builders.estimated_sparse import selection_report
    from .free_sparse_runs import captured_qkv

    layers = captured_qkv(model, batch[:1, :-1])
    return sum(selection_report(method, q, k, v, rows=64, **params)["density"] for q, k, v in layers) / len(layers)


def curve_rows(model, held: torch.Tensor, *, method: str, n: int, score: int, count: int, seed: int) -> list[dict]:
    """One row per setting of ``method``: quality and density on this seed's windows."""
    phase, settings = sweeps(n)[method]
    batch = windows(held, n, count, seed).to(next(model.parameters()).device)
    dense = scored_loss(model, model, batch, score, phase)
    rows = []
    for params in settings:
        if method == "hyper_attention":
            params = {**params, "seed": seed}
        if method == "adamas":  # the authors' threshold 10 at head dim 128, scaled to this head dim
            params = {**params, "threshold": round(10 * math.sqrt(model.config.dim / model.config.heads / 128), 3)}
        sparse = with_mechanism(model, method, params)
        if phase == "prefill":
            loss = scored_loss(sparse, sparse, batch, score, "prefill")
        else:  # the prompt through the method reading every key (dense), to hand the method its own state
            loss = scored_loss(with_mechanism(model, method, {**params, "top_k": n}), sparse, batch, score, "decode")
        density = prefill_density(model, batch, method, params) if phase == "prefill" \
            else decode_density(method, params, n, score)
        rows.append({"curve": True, "phase": phase, "method": method, "seed": seed, "params": params, "N": n,
                     "density": density, "loss": loss, "dense_loss": dense, "quality": math.exp(dense - loss)})
        print(f"curves {phase:>7} {method:>16} seed {seed}: density {density:.3f} quality {rows[-1]['quality']:.4f}",
              flush=True)
    return rows


_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def summarise(rows: list[dict]) -> list[dict]:
    """Per method, phase and setting: mean density and quality over seeds, the quality's 95% t-interval."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("curve"):
            key = (r["phase"], r["method"], str({k: v for k, v in r["params"].items() if k != "seed"}))
            groups.setdefault(key, []).append(r)
    out = []
    for (phase, method, setting), rs in groups.items():
        q = [r["quality"] for r in rs]
        mean = sum(q) / len(q)
        sd = math.sqrt(sum((x - mean) ** 2 for x in q) / (len(q) - 1)) if len(q) > 1 else float("nan")
        half = _T95.get(len(q) - 1, 1.96) * sd / math.sqrt(len(q)) if len(q) > 1 else float("nan")
        out.append({"phase": phase, "method": method, "setting": setting, "seeds": len(q),
                    "density": sum(r["density"] for r in rs) / len(rs), "quality": mean, "quality_ci95": half})
    return out
