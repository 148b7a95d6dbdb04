"""``attnkit bench deconstruct``: Deconstructing Attention's variants, uniform and hybrid, on the Shakespeare LM.

Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for
Effective Language Modeling" (2025), at CPU scale: train the byte-level Shakespeare LM of
``attnkit train lm`` with each relaxed variant (:mod:`attnkit.models.deconstructed`; the
Approximate variant is the ``based`` mechanism) in every layer (uniform) and in the odd layers
only, standard softmax attention in the even ones (hybrid, the paper's 1-based odd/even split),
and report held-out perplexity beside standard attention's. For each hybrid model the paper's
"skip" probe is measured too: the same trained model evaluated with its variant layers removed
(their blocks act as the identity), without further training.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..options import names, positive_int
from ..runner import run_items
from ..store import Store

THREADS = 1  # the machine is usually shared
VARIANTS = ("mlp", "approximate", "non_approximate", "rnd_emb_qk", "fixed_seq_qk", "static_emb_qk")
CONFIGS = ("uniform", "hybrid")


def add_arguments(p) -> None:
    p.add_argument("--variants", type=names, default=list(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--configs", type=names, default=list(CONFIGS), help="comma list of uniform, hybrid")
    p.add_argument("--layers", type=positive_int, default=4, help="layers (default 4; hybrid: variant in layers 1, 3, ..)")
    p.add_argument("--dim", type=positive_int, default=64)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--context", type=positive_int, default=64)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=300, help="training steps per model (default 300)")
    p.add_argument("--eval-tokens", type=positive_int, default=32768, help="held-out tokens scored (default 32768)")
    p.add_argument("--seed", type=int, default=0)


def configure(args) -> dict:
    bad = sorted(set(args.variants) - set(VARIANTS))
    if bad:
        raise ValueError(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    bad = sorted(set(args.configs) - set(CONFIGS))
    if bad:
        raise ValueError(f"--configs: unknown {bad}; choose from {list(CONFIGS)}")
    if args.dim % args.heads:
        raise ValueError(f"--dim {args.dim} must be divisible by --heads {args.heads}")
    return {k: getattr(args, k) for k in ("variants", "configs", "layers", "dim", "heads", "context", "batch",
                                          "steps", "eval_tokens", "seed")}


def plan(config: dict) -> list[dict]:
    items = [{"variant": "standard", "config": "uniform"}]
    return items + [{"variant": v, "config": c} for v in config["variants"] for c in config["configs"]]


def schedule(config_name: str, layers: int) -> str:
    """``D`` (variant) in every layer, or in the odd (1-based) layers with ``F`` (softmax) in the even ones."""
    return "D" * layers if config_name == "uniform" else "".join("DF"[i % 2] for i in range(layers))


def variant_mixer(variant: str, context: int, train_ids: torch.Tensor):
    if variant == "standard":
        return "softmax"
    if variant == "approximate":
        return "based"
    options = {"rnd_emb_qk": {"length": context}, "fixed_seq_qk": {"tokens": train_ids[:context].tolist()}}
    return {"deconstructed": variant, **options.get(variant, {})}


class Skipped(nn.Module):
    """A removed layer: its block passes the hidden states through."""

    qk_source = None

    def forward(self, x, **_):
        return x


def measure_item(item: dict, config: dict, device: str = "cpu") -> dict:
    from ...data import shakespeare
    from ...data.codecs import make_codec
    from ...models import DecoderLM, ModelConfig
    from ...training.lm import TrainConfig, evaluate, train

    train_text, held_text = shakespeare.load_split()
    codec = make_codec("byte", train_text)
    train_ids, held_ids = codec.encode(train_text), codec.encode(held_text)
    torch.manual_seed(config["seed"])
    sched = schedule(item["config"], config["layers"])
    mixers = {"D": variant_mixer(item["variant"], config["context"], train_ids), "F": "softmax"}
    model = DecoderLM(ModelConfig(vocab_size=codec.vocab_size, dim=config["dim"], heads=config["heads"],
                                  schedule=sched, mixers={k: v for k, v in mixers.items() if k in sched})).to(device)
    cfg = TrainConfig(context=config["context"], batch=config["batch"], max_steps=config["steps"], minutes=None,
                      eval_tokens=config["eval_tokens"], seed=config["seed"])
    result = train(model, train_ids, cfg)
    model.eval()
    metrics = evaluate(model, train_ids, held_ids, codec.vocab_size, cfg.context, cfg.eval_tokens)
    out = {"perplexity": metrics["perplexity"], "unigram_perplexity": metrics["unigram_perplexity"],
           "parameters": sum(p.numel() for p in model.parameters()), "steps": result["steps"],
           "final_train_loss": round(sum(result["losses"][-20:]) / len(result["losses"][-20:]), 4),
           "seconds": result["seconds"]}
    if item["config"] == "hybrid":
        for i, letter in enumerate(sched):
            if letter == "D":
                model.blocks[i] = Skipped()
        out["skip_perplexity"] = evaluate(model, train_ids, held_ids, codec.vocab_size, cfg.context,
                                          cfg.eval_tokens)["perplexity"]
    return out


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Deconstructing Attention on the Shakespeare LM: held-out perplexity (byte level)")
    for col in ("variant", "config", "perplexity", "skip (hybrid, variant layers removed)", "train loss", "parameters", "s"):
        table.add_column(col)
    for r in rows:
        if "perplexity" not in r:
            table.add_row(r["variant"], r["config"], r.get("error", "?"), "-", "-", "-", "-")
            continue
        table.add_row(r["variant"], r["config"], f"{r['perplexity']:.3f}", str(r.get("skip_perplexity", "-")),
                      f"{r['final_train_loss']:.3f}", str(r["parameters"]), str(r["seconds"]))
    Console(width=140).print(table)


def run(args) -> int:
    config = configure(args)
    code, run_id = run_items("deconstruct", config, plan(config), partial(measure_item, config=config, device=args.device),
                             args, describe=lambda it: f"{it['variant']} {it['config']}")
    print_summary(Store(args.db).rows(run_id))
    return code
