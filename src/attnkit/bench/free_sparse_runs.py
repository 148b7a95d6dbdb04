"""Speed and recall of the training-free sparse methods, prefill and decode measured apart.

Used by ``attnkit bench sparse --speed`` and ``--lm-recall``:

- **prefill**: one causal self-attention call on random inputs (B=1, H=8, D=64,
  fp32) against ``F.scaled_dot_product_attention(is_causal=True)``, estimation
  included, in turns in one process; with the call's density, attention-mass
  recall and output error (:func:`attnkit.builders.estimated_sparse.selection_report`);
  and for a method that picks a tile layout, the floor of that layout (:func:`layout_floor`);
- **decode**: one decode step after a prompt of ``N`` tokens (the state is made,
  then warmed up by a few steps), against attnkit's dense decode step (softmax
  over a :class:`~attnkit.state.KVCache`, each step continuing from the newest
  state as a generate loop does) and against SDPA of the one query over a copy
  of the cached keys of its own, in turns; with the recall of the decoded query.
  Every call reads tensors no other call reads, so none finds its keys already
  in the last-level cache because the call before it has just read them;
- **lm-recall**: q, k, v of every layer of a trained LM captured on held-out
  text, recall and output error of each method on them (decode: the last
  queries against their whole past; prefill: sampled rows of the whole call).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..kernels.compiled import loaded, switched_off

B, H, D = 1, 8, 64
PREFILL = ("block_topk", "hip", "xattention", "flexprefill", "vertical_slash", "sample_attention", "anchor_attention",
           "hyper_attention")
DECODE = ("quest", "loki", "adamas")


def top_k_for_density(blocks: int, density: float) -> int:
    """The block top-k whose causal tile density is closest to ``density`` with ``blocks`` query blocks."""
    total = blocks * (blocks + 1) / 2

    def kept(t):
        return sum(min(t, r + 1) for r in range(blocks)) / total

    return min(range(1, blocks + 1), key=lambda t: abs(kept(t) - density))


def prefill_params(method: str, n: int, sparsity: float) -> dict:
    """Each method at the papers' settings; block top-k, HiP and vertical-slash sized for ``sparsity``."""
    if method in ("block_topk", "hip"):
        return {"block": 128, "top_k": top_k_for_density(math.ceil(n / 128), 1 - sparsity)}
    if method == "vertical_slash":
        lines = max(1, round(n * (1 - sparsity) / 2))
        return {"vertical": lines, "slash": lines}
    return {}


def decode_params(method: str, n: int, fraction: float, keys: torch.Tensor) -> dict:
    if method == "quest":
        return {"page": 16, "top_k": max(1, round(n / 16 * fraction))}
    if method == "adamas":  # the authors' threshold 10 at head dim 128, scaled to the same bucket shares
        return {"top_k": max(1, round(n * fraction)), "threshold": round(10 * math.sqrt(keys.shape[-1] / 128), 3)}
    from ..families.loki import loki_components

    return {"components": loki_components(keys), "rank": keys.shape[-1] // 4, "top_k": max(1, round(n * fraction))}


def seer_params(gates: dict, n: int, fraction: float) -> dict:
    """SeerAttention-R reading ``fraction`` of ``n`` cached keys: that share of its blocks, its own included."""
    return {**gates, "top_k": max(1, round(n / gates["block_size"] * fraction))}


def random_qkv(n: int, seed: int = 0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, D, generator=g).to(device) for _ in range(3))


def _best(calls: dict, repeats: int) -> dict:
    """Each call's best time over ``repeats`` rounds, the calls run in turns (one warm-up round first)."""
    best = {name: float("inf") for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            if round_:
                best[name] = min(best[name], time.perf_counter() - t)
    return best


@torch.no_grad()
def prefill_speed(n: int, methods, sparsity: float, repeats: int, device="cpu") -> list[dict]:
    """Each method's call (estimation included) against dense causal SDPA, in turns; for an estimator that picks a
    tile layout, its estimate alone too (``t_estimate``: the rest of ``t`` is the attention over the kept tiles) and
    the floor of its layout (``t_floor``, :func:`layout_floor`), all in the same turns."""
    from .. import attention
    from ..builders.estimated_sparse import selection_report
    from ..registry import get

    q, k, v = random_qkv(n, device=device)
    params = {m: prefill_params(m, n, sparsity) for m in methods}
    calls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    calls.update({m: (lambda m=m: attention(q, k, v, m, causal=True, **params[m])) for m in methods})
    for m in methods:
        estimator = get(m).extra.get("estimator")
        if estimator is not None:
            full = {**get(m).defaults, **params[m]}
            calls[f"{m} estimate"] = lambda e=estimator, p=full: e.estimate(q, k, scale=q.shape[-1] ** -0.5, **p)
            layout = estimator.estimate(q, k, scale=q.shape[-1] ** -0.5, **full)
            calls[f"{m} floor"] = layout_floor(q, k, v, layout, estimator.block(**full))
    t = _best(calls, repeats)
    rows = []
    for m in methods:
        report = selection_report(m, q, k, v, rows=256, **params[m])
        row = {"phase": "prefill", "method": m, "N": n, "params": params[m], "t_sdpa": t["sdpa"], "t": t[m],
               "speedup": t["sdpa"] / t[m], "t_estimate": t.get(f"{m} estimate"), "t_floor": t.get(f"{m} floor"),
               **report}
        split = "" if row["t_estimate"] is None else (f" (estimate {row['t_estimate']:.3f} s; floor "
                                                      f"{row['t_floor']:.3f} s = {t['sdpa'] / row['t_floor']:.2f}x)")
        print(f"prefill N={n:>6} {m:>14}: {t[m]:8.3f} s{split}, sdpa {t['sdpa']:8.3f} s -> {row['speedup']:5.2f}x; "
              f"density {report['density']:.3f} recall {report['recall']:.3f} error {report['output_rel_error']:.3f}",
              flush=True)
        rows.append(row)
    return rows


def layout_floor(q, k, v, layout: torch.Tensor, block: int):
    """A call doing the attention work of a tile ``layout`` (bool ``(B, H, R, R)``) the way the tile engine
    (:func:`attnkit.kernels.tile_rows.tile_rows_attention`) lays it out, and nothing else: the diagonal tiles in
    one causal call, then for every query block one call over as many key blocks as it keeps past tiles, read in
    place (the blocks just before it). No estimate, no copy of the kept tiles, no merge: the engine cannot run that
    layout faster with these calls. Whole blocks only (a last, shorter block is left out); ``k, v`` have ``q``'s heads."""
    from ..kernels.tile_rows import attention_with_lse

    B, H, N, D = q.shape
    R = N // block
    r = torch.arange(R, device=q.device)
    widths = (layout[..., :R, :R] & (r[None, :] < r[:, None])).sum(-1).reshape(-1).tolist()
    heads = [x.reshape(B * H, N, x.shape[-1]) for x in (q, k, v)]
    tiles = [x[:, :R * block].reshape(B * H, R, block, x.shape[-1]) for x in heads]
    scale = D ** -0.5

    def run():
        attention_with_lse(*tiles, causal=True, scale=scale)
        for i, w in enumerate(widths):
            if w:
                h, row = divmod(i, R)
                query = heads[0][h, row * block:(row + 1) * block][None, None]
                keys = [x[h, (row - w) * block:row * block][None, None] for x in heads[1:]]
                attention_with_lse(query, *keys, causal=False, scale=scale)

    return run


def _decode_state(method, q, k, v, n, params):
    from .. import attention

    _, state = attention(q[:, :, n - 1:n], k[:, :, :n], v[:, :, :n], method, causal=True, return_state=True, **params)
    return state


def _recall_of_step(method, q1, k, v, params) -> tuple[float, float]:
    """Recall and output error of one query at the end of ``k``: the keys it reads from its own one-shot call."""
    from .. import attention

    full = attention(q1, k, v, "softmax", causal=True)
    out, _ = attention(q1, k, v, method, causal=True, return_state=True, **params)  # a decode call on a prompt
    p = torch.softmax((q1 @ k.repeat_interleave(q1.shape[1] // k.shape[1], 1).transpose(-1, -2)).double()
                      * q1.shape[-1] ** -0.5, -1)
    kept = _kept_keys(method, q1, k, params)
    return float((p * kept).sum(-1).mean()), float((out - full).norm() / full.norm())


def _kept_keys(method, q1, k, params) -> torch.Tensor:
    """Bool ``(B, H, 1, N)``: the keys the last query reads (from the method's own selection code)."""
    N = k.shape[2]
    if method == "quest":
        from ..families.quest import page_digest, quest_pages

        digest = page_digest(k, params["page"])
        blocks, valid = quest_pages(q1, digest, N, page=params["page"], top_k=params["top_k"])
        tokens = (blocks[..., None] * params["page"] + torch.arange(params["page"], device=k.device)).flatten(-2)
        keep = valid.repeat_interleave(params["page"], -1) & (tokens < N)
    elif method == "seer_attention_r":
        from ..families.seer_decode import attended

        return attended(q1, k, torch.zeros(1, dtype=torch.long, device=k.device), scale=None, threshold=0.0, **params)[0]
    elif method == "adamas":
        from ..families.adamas import _chosen, key_digest

        tokens, keep = _chosen(q1, key_digest(k, params["threshold"]), N, params["top_k"], params["threshold"], 0, 1)
    else:
        from ..families.loki import _chosen, _project

        basis = params["components"][:, :, :params["rank"]]
        tokens, keep = _chosen(q1, _project(k, basis), basis, N, params["top_k"], 0, q1.shape[2])
    out = torch.zeros(*tokens.shape[:3], N + 1, dtype=torch.bool, device=k.device)
    return out.scatter_(-1, torch.where(keep, tokens, N).clamp(max=N), True)[..., :N]


@torch.no_grad()
def decode_speed(n: int, methods, fraction: float, steps: int, repeats: int, device="cpu") -> list[dict]:
    from .. import attention

    q, k, v = random_qkv(n + steps * (repeats + 2), device=device)
    params = {"softmax": {}, **{m: decode_params(m, n, fraction, k[:, :, : min(n, 4096)]) for m in methods}}
    states = {m: _decode_state(m, q, k, v, n, params[m]) for m in params}
    cursor = {"t": n}
    # with Quest's compiled kernel built, its torch form is measured in the same turns too (a state of its own)
    kernel = "quest" in methods and torch.device(device).type == "cpu" and loaded("quest_decode") is not None
    if kernel:
        states["quest torch form"] = _decode_state("quest", q, k, v, n, params["quest"])

    def stepper(m, mechanism=None):
        def run():
            for _ in range(steps):
                t = cursor["t"]
                piece = slice(t, t + 1)
                _, states[m] = attention(q[:, :, piece], k[:, :, piece], v[:, :, piece], mechanism or m, causal=True,
                                         state=states[m], return_state=True, **params[mechanism or m])
        return run

    def torch_form():
        with switched_off():
            stepper("quest torch form", "quest")()

    # SDPA reads a copy of its own: run right after the dense step on the same tensors it would find
    # them in the last-level cache the step just filled (a whole 16k cache fits in a large L3).
    own_k, own_v = (x.clone(memory_format=torch.contiguous_format) for x in (states["softmax"].k, states["softmax"].v))

    def sdpa():
        for _ in range(steps):
            F.scaled_dot_product_attention(q[:, :, n:n + 1], own_k, own_v)

    floors = _decode_floors(q[:, :, n:n + 1], k[:, :, :n], v[:, :, :n], fraction, steps)
    calls = {"softmax_step": stepper("softmax"), "sdpa_on_cache": sdpa, **{m: stepper(m) for m in methods},
             **({"quest torch form": torch_form} if kernel else {}), **floors}
    t = {name: s / steps for name, s in _best(calls, repeats).items()}
    for name in floors:
        print(f"decode  N={n:>6} floor: {name}: {t[name] * 1e3:7.2f} ms = {t[name] / t['sdpa_on_cache']:.2f}x SDPA on "
              f"the cache", flush=True)
    rows = []
    for m in methods:
        recall, error = _recall_of_step(m, q[:, :, n - 1:n], k[:, :, :n], v[:, :, :n], params[m])
        shown = {p: val for p, val in params[m].items() if p != "components"}
        row = {"phase": "decode", "method": m, "N": n, "params": shown, "fraction": fraction, "t_step": t[m],
               "t_softmax_step": t["softmax_step"], "t_sdpa_on_cache": t["sdpa_on_cache"],
               "ratio_to_softmax_step": t[m] / t["softmax_step"], "ratio_to_sdpa": t[m] / t["sdpa_on_cache"],
               "recall": recall, "output_rel_error": error,
               "floors": {name: t[name] / t["sdpa_on_cache"] for name in floors}}
        if m == "quest":
            row["form"] = "compiled kernel" if kernel else "torch form"
            if kernel:
                row["t_step_torch_form"] = t["quest torch form"]
        print(f"decode  N={n:>6} {m:>6}: step {t[m] * 1e3:7.2f} ms = {row['ratio_to_softmax_step']:.2f}x the dense "
              f"step ({t['softmax_step'] * 1e3:.2f} ms), {row['ratio_to_sdpa']:.2f}x SDPA on the cache "
              f"({t['sdpa_on_cache'] * 1e3:.2f} ms); recall {recall:.3f} error {error:.3f}"
              + (f" ({row['form']})" if "form" in row else ""), flush=True)
        if m == "quest" and kernel:
            print(f"decode  N={n:>6}  quest: torch form {t['quest torch form'] * 1e3:5.2f} ms = "
                  f"{t['quest torch form'] / t['sdpa_on_cache']:.2f}x SDPA on the cache; the compiled kernel takes "
                  f"{t[m] / t['quest torch form']:.2f}x its time", flush=True)
        rows.append(row)
    return rows


def _decode_floors(q1, k, v, fraction: float, steps: int) -> dict:
    """What reading ``fraction`` of a cache costs at least, each on a copy of its own: streaming that share of
    the keys and values (contiguous); copying Quest's chosen pages (16 tokens) of every head alone; and everything
    Quest's step must read, read in place with the cheapest ops: the half of its page bounds a query's signs select
    streamed (``N d / 16`` numbers per head) and its chosen pages of keys and of values summed where they are (``embedding_bag`` over
    page-sized rows, nothing written but one row per head)."""
    from ..families.quest import page_digest, quest_pages

    n = k.shape[2]
    share = max(1, round(n * fraction))
    ks, vs = k[:, :, :share].clone(), v[:, :, :share].clone()
    kp, vp = k.clone(), v.clone()
    digest, D = page_digest(k, 16), k.shape[3]
    pages, _ = quest_pages(q1, digest, n, page=16, top_k=max(1, round(n / 16 * fraction)))
    flat = (torch.arange(k.shape[0] * k.shape[1], device=k.device)[:, None] * (n // 16)
            + pages.flatten(0, 1).flatten(1).clamp(max=n // 16 - 1)).flatten()
    heads = torch.arange(0, flat.numel(), pages.shape[-1], device=k.device)
    k_pages, v_pages = kp.view(-1, 16 * k.shape[3]), vp.view(-1, 16 * v.shape[3])

    def stream():
        for _ in range(steps):
            ks.sum(), vs.sum()

    def copy_pages():
        for _ in range(steps):
            k_pages.index_select(0, flat), v_pages.index_select(0, flat)

    def quest_reads():
        for _ in range(steps):
            digest[:, :, :D].sum()  # the half of the bounds a query's signs select: D of the 2 D rows
            F.embedding_bag(flat, k_pages, heads, mode="sum"), F.embedding_bag(flat, v_pages, heads, mode="sum")

    return {f"stream {fraction:g} of K and V": stream, "copy Quest's chosen pages": copy_pages,
            "read Quest's bounds and chosen K, V in place": quest_reads}


@torch.no_grad()
def captured_qkv(model, ids: torch.Tensor, *, unrotated: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """q, k, v (RoPE applied as the layer applies it) of every attnkit attention layer of ``model`` on ``ids``;
    with ``unrotated=True`` also q and k before the RoPE: ``(q, k, v, q_nope, k_nope)``."""
    from ..nn.attention import Attention

    inputs, hooks = [], []
    for module in model.modules():
        if isinstance(module, Attention):
            hooks.append(module.register_forward_pre_hook(lambda mod, args: inputs.append((mod, args[0]))))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for mod, x in inputs:
        q = mod.split_heads(mod.q_proj(x), mod.heads)
        if mod.q_norm is not None:
            q = mod.q_norm(q)
        k, v = mod.project_kv(x)
        q_nope, k_nope = q, k
        if mod.rope is not None:
            q, k = mod.rope.apply(q, k, q_offset=0, k_offset=0)
        out.append((q, k, v, q_nope, k_nope) if unrotated else (q, k, v))
    return out


def seer_gates(path) -> list[dict]:
    """Per attention layer, the SeerAttention-R gate weights and settings of a gated LM (``attnkit train seer-r
    --out``)."""
    from ..registry import get
    from ..training.lm import load_checkpoint
    from ..training.seer import gated_layers

    model, _, _ = load_checkpoint(path)
    layers = gated_layers(model, "seer_attention_r")
    if not layers:
        raise ValueError(f"{path} has no seer_attention_r layers: train one with attnkit train seer-r --out")
    defaults = get("seer_attention_r").defaults
    return [{"gate_q": layer.inputs.gate_q.detach(), "gate_k": layer.inputs.gate_k.detach(),
             "block_size": {**defaults, **layer.mechanism_params}["block_size"],
             "rope_base": {**defaults, **layer.mechanism_params}["rope_base"]} for layer in layers]


@torch.no_grad()
def lm_recall(model, held: torch.Tensor, calibration: torch.Tensor, n: int, fraction: float, sparsity: float,
              queries: int, seer: list[dict] | None = None, methods=None) -> list[dict]:
    """Recall and output error of every method on the LM's own q, k, v at length ``n`` (held-out text, repeated
    end to end if it is shorter), decode: the last ``queries`` positions; prefill: 256 sampled rows. ``seer``
    (:func:`seer_gates`): also SeerAttention-R in decode, its gates reading q and k before the RoPE; ``methods``:
    only these of the others (default all)."""
    from ..builders.estimated_sparse import selection_report

    text = held.repeat(math.ceil(n / held.numel()))[:n][None]
    layers = captured_qkv(model, text, unrotated=True)
    calib = captured_qkv(model, calibration[: min(4096, calibration.numel())][None])
    rows = []
    for layer, ((q, k, v, q_nope, k_nope), (_, ck, _)) in enumerate(zip(layers, calib)):
        decoders = [m for m in DECODE if methods is None or m in methods] + (["seer_attention_r"] if seer else [])
        prefills = [m for m in PREFILL if methods is None or m in methods]
        for m in decoders:
            params = decode_params(m, n, fraction, ck) if m in DECODE else seer_params(seer[layer], n, fraction)
            recalls, errors = [], []
            for t in range(n - queries, n):
                per_query = ({"gate_queries": q_nope[:, :, t:t + 1], "gate_keys": k_nope[:, :, :t + 1]}
                             if m == "seer_attention_r" else {})
                r, e = _recall_of_step(m, q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], {**params, **per_query})
                recalls.append(r)
                errors.append(e)
            rows.append({"phase": "decode", "method": m, "N": n, "layer": layer, "fraction": fraction,
                         "recall": sum(recalls) / len(recalls), "output_rel_error": sum(errors) / len(errors)})
        for m in prefills:
            params = prefill_params(m, n, sparsity)
            rows.append({"phase": "prefill", "method": m, "N": n, "layer": layer, "params": params,
                         **selection_report(m, q, k, v, rows=256, **params)})
        for r in rows[-len(decoders) - len(prefills):]:
            extra = f" density {r['density']:.3f}" if "density" in r else ""
            print(f"LM layer {layer} {r['phase']:>7} {r['method']:>14}: recall {r['recall']:.3f} "
                  f"error {r['output_rel_error']:.3f}{extra}", flush=True)
    for summary in decode_recall_summaries(rows):
        print(f"LM decode {summary['method']:>14}: mean recall {summary['recall']:.3f} over layers "
              f"{summary['layers']}", flush=True)
    return rows


def decode_recall_summaries(rows: list[dict]) -> list[dict]:
    """Each decode method's recall averaged over all layers, and over layers 2 and up when there are more: the
    setting Quest's authors evaluate in, where the first two layers stay dense."""
    out = []
    for m in dict.fromkeys(r["method"] for r in rows if r["phase"] == "decode"):
        per_layer = {r["layer"]: r["recall"] for r in rows if r["phase"] == "decode" and r["method"] == m}
        spans = [sorted(per_layer)] + ([sorted(per_layer)[2:]] if len(per_layer) > 2 else [])
        out += [{"method": m, "layers": f"{span[0]}-{span[-1]}", "recall": sum(per_layer[i] for i in span) / len(span)}
                for span in spans]
    return out
