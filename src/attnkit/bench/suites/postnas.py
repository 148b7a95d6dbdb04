"""``attnkit bench postnas``: PostNAS's placement and linear-block search on a pretrained full-attention LM.

Jet-Nemotron's PostNAS (Gu et al. 2025) scaled down (:mod:`attnkit.training.postnas`): load a
full-attention LM checkpoint of ``attnkit train lm --out`` (``--checkpoint``), freeze it, give
every layer a linear alternative per ``--linear`` mechanism (projections copied from the layer's
attention), train that once-for-all super-network for ``--steps`` steps against the pretrained
model (random placements of ``--keep`` full-attention layers per step), then beam-search the
placement of ``--keep`` full-attention layers on held-out Shakespeare, once for the LM loss and
once for a retrieval loss (a held-out passage written twice: the loss on its second copy). Rows:
the pretrained model, the all-linear network and the best placement per linear block, budget
and objective.
"""
from __future__ import annotations

from functools import partial

import torch

from ..options import ints, names, positive_float, positive_int
from ..runner import run_items
from ..store import Store

THREADS = 1  # the machine is usually shared


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", default=None, help="a full-attention LM checkpoint (attnkit train lm --out); required")
    p.add_argument("--linear", type=names, default=["gated_deltanet", "gla"], help="candidate linear mechanisms")
    p.add_argument("--keep", type=ints, default=[1, 2], help="full-attention layers kept (comma list of budgets)")
    p.add_argument("--steps", type=positive_int, default=150, help="super-network training steps per candidate")
    p.add_argument("--context", type=positive_int, default=128)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--beam", type=positive_int, default=2)
    p.add_argument("--passage", type=positive_int, default=48, help="retrieval passage length (written twice)")
    p.add_argument("--seed", type=int, default=0)


def configure(args) -> dict:
    from ... import spec
    from ...training.lm import load_checkpoint

    if args.checkpoint is None:
        raise ValueError("--checkpoint is required: a full-attention LM checkpoint (attnkit train lm --out LM.pt)")
    model, _, _ = load_checkpoint(args.checkpoint)  # not a checkpoint: fails here, before any work
    layers = len(model.blocks)
    for m in args.linear:
        if not spec(m).supports(causal=True, cross=False):
            raise ValueError(f"--linear: {m!r} does not support causal self-attention")
    bad = [k for k in args.keep if not 0 < k < layers]
    if bad:
        raise ValueError(f"--keep: budgets must be between 1 and {layers - 1} (the model has {layers} layers), got {bad}")
    if 2 * args.passage > args.context:
        raise ValueError(f"--passage {args.passage} written twice must fit in --context {args.context}")
    return {k: getattr(args, k) for k in ("checkpoint", "linear", "keep", "steps", "context", "batch", "lr", "beam",
                                          "passage", "seed")}


def plan(config: dict) -> list[dict]:
    return [{"linear": m} for m in config["linear"]]


def measure_item(item: dict, config: dict, device: str = "cpu") -> dict:
    from ...data import shakespeare
    from ...training import postnas
    from ...training.lm import load_checkpoint, sample_batch
    from ...training.metrics import eval_windows

    teacher, codec, _ = load_checkpoint(config["checkpoint"])
    model, _, _ = load_checkpoint(config["checkpoint"])
    teacher, model = teacher.to(device), model.to(device)
    train_text, held_text = shakespeare.load_split()
    train_ids, held_ids = codec.encode(train_text), codec.encode(held_text)
    held = eval_windows(held_ids, config["context"], 16 * config["context"]).to(device)
    retrieval = postnas.retrieval_rows(held_ids, config["passage"], 16).to(device)
    base = postnas.scores(teacher, held, retrieval)
    torch.manual_seed(config["seed"])
    postnas.super_network(model, item["linear"])
    g = torch.Generator().manual_seed(config["seed"])
    batches = lambda gen: sample_batch(train_ids, config["context"] - 1, config["batch"], gen).to(device)  # noqa: E731
    losses = postnas.train_super_network(model, teacher, batches, keep=max(config["keep"]), steps=config["steps"],
                                         lr=config["lr"], generator=g)
    postnas.set_placement(model, set())
    out = {"pretrained": base, "all_linear": postnas.scores(model, held, retrieval),
           "final_kl": round(sum(losses[-10:]) / len(losses[-10:]), 4), "searches": []}
    for keep in config["keep"]:
        for objective in ("lm", "retrieval"):
            ranked = postnas.beam_search(model, held, retrieval, keep=keep, beam=config["beam"], objective=objective)
            out["searches"].append({"keep": keep, "objective": objective, "best": ranked[0], "evaluated": len(ranked)})
    return out


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="PostNAS (scaled down): best placement of the full-attention layers (0-based), held-out losses")
    for col in ("linear", "full layers kept", "searched for", "placement", "lm loss", "retrieval loss"):
        table.add_column(col)
    for r in rows:
        if "searches" not in r:
            table.add_row(r["linear"], "-", "-", r.get("error", "?"), "-", "-")
            continue
        table.add_row(r["linear"], "all (pretrained)", "-", "-", str(r["pretrained"]["lm"]), str(r["pretrained"]["retrieval"]))
        table.add_row(r["linear"], "0", "-", "-", str(r["all_linear"]["lm"]), str(r["all_linear"]["retrieval"]))
        for s in r["searches"]:
            table.add_row(r["linear"], str(s["keep"]), s["objective"], str(s["best"]["full_layers"]),
                          str(s["best"]["lm"]), str(s["best"]["retrieval"]))
    Console(width=140).print(table)


def run(args) -> int:
    config = configure(args)
    code, run_id = run_items("postnas", config, plan(config), partial(measure_item, config=config, device=args.device),
                             args, describe=lambda it: f"super-network with {it['linear']}")
    print_summary(Store(args.db).rows(run_id))
    return code
