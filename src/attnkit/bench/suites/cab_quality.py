"""``attnkit bench cab-quality``: CAB's quality side: each mechanism trained under each of the four attention patterns.

After "CAB: Comprehensive Attention Benchmarking on Long Sequence Modeling", at CPU scale: one
small task per pattern (:mod:`attnkit.bench._cab_tasks`): a byte-level Shakespeare LM
(causal self; held-out bits per byte), comedy-or-tragedy classification of Shakespeare's
speeches (non-causal self; accuracy), reversing the even positions of a letter string
(non-causal cross; token accuracy) and a lagged copy read while streaming the source (causal
cross; token accuracy). For every (task, mechanism) whose pattern the mechanism supports, a
fresh 2-layer model (dim 64, 4 heads, learned absolute positions) with the mechanism in every
attention of that pattern is trained ``--steps`` steps with the same seed, data and schedule,
and scored on held-out data; ``softmax`` is the vanilla baseline of the same run, and each
row gives its figure relative to it. Mechanisms that do not support a pattern are listed as
such (CAB's point: many efficient attentions exist only for some patterns).
`attnkit bench cab` is the efficiency side (pattern support as run, efficiency lengths).

Mechanism parameters scaled to these lengths (128 tokens; 64 source tokens in the cross tasks):
a window of a quarter of the keys (``sliding_window``: 32; 16 in the cross tasks), Combiner
segments of 16 tokens, 16 Nystromformer landmarks; ``--params`` overrides them.
"""
from __future__ import annotations

import json
import time

from ... import spec
from .._cab_tasks import PATTERN_OF, TASKS, train
from ..options import names, positive_float, positive_int
from ..runner import run_items
from ..store import Store

NAME = "cab-quality"
THREADS = 1  # the machine is usually shared
MECHANISMS = ["softmax", "sliding_window", "linear", "performer", "nystromformer", "combiner"]
TEXT_PARAMS = {"sliding_window": {"window": 32}, "combiner": {"segment_size": 16}, "nystromformer": {"landmarks": 16},
               "local_linear": {"q_block": 32, "kv_block": 32}}
CROSS_PARAMS = {**TEXT_PARAMS, "sliding_window": {"window": 16}}


def params_for(mechanism: str, task: str, overrides: dict) -> dict:
    table = CROSS_PARAMS if PATTERN_OF[task].endswith("cross") else TEXT_PARAMS
    return {**table.get(mechanism, {}), **overrides.get(mechanism, {})}


def add_arguments(p) -> None:
    p.add_argument("--mechanisms", type=names, default=MECHANISMS,
                   help=f"comma list (default {','.join(MECHANISMS)}); softmax is always added as the baseline")
    p.add_argument("--tasks", type=names, default=list(TASKS), help=f"comma list of {','.join(TASKS)} (default all)")
    p.add_argument("--steps", type=positive_int, default=150, help="training steps per model (default 150: a smoke "
                   "run; the README's figure used 500)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--params", type=json.loads, default={},
                   help='JSON {mechanism: {param: value}} overriding the scaled defaults')
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    mechs = ["softmax"] + [m for m in args.mechanisms if m != "softmax"]
    for m in mechs:
        spec(m)  # unknown names: a ValueError naming the closest ones, before any work
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; expected some of {sorted(TASKS)}")
    if not isinstance(args.params, dict) or not all(isinstance(v, dict) for v in args.params.values()):
        raise ValueError('--params must be a JSON object {mechanism: {param: value}}')
    tasks: dict = {}

    def measure(item):
        name, mech = item["task"], item["mechanism"]
        if PATTERN_OF[name] not in spec(mech).patterns:
            return {"supported": False}
        if name not in tasks:
            tasks[name] = TASKS[name](args.seed)
        task = tasks[name]
        params = params_for(mech, name, args.params)
        start = time.perf_counter()
        model, final_loss = train(task, mech, params, steps=args.steps, lr=args.lr, seed=args.seed)
        seconds = time.perf_counter() - start
        figure = task.score(model)
        print(f"{name} ({PATTERN_OF[name]}) {mech}: {task.metric} {figure:.3f} (chance {task.chance:.3f}; "
              f"training loss {final_loss:.3f}, {seconds:.0f} s)")
        return {"supported": True, "score": figure, "metric": task.metric, "lower_is_better": task.lower_is_better,
                "chance": task.chance, "final_loss": final_loss, "train_seconds": seconds, "params": params}

    items = [{"task": t, "mechanism": m} for t in args.tasks for m in mechs]
    config = {"mechanisms": mechs, "tasks": args.tasks, "steps": args.steps, "lr": args.lr, "params": args.params,
              "seed": args.seed}
    code, run_id = run_items("cab-quality", config, items, measure, args,
                             describe=lambda it: f"{it['task']} {it['mechanism']}")
    print_table(Store(args.db).rows(run_id))
    return code


def table(rows: list[dict]) -> list[dict]:
    """One row per mechanism: per task its figure and its ratio to softmax's figure in the same run
    (``n/a``: pattern not supported)."""
    base = {r["task"]: r["score"] for r in rows if r.get("mechanism") == "softmax" and r.get("supported")}
    out: dict[str, dict] = {}
    for r in rows:
        if "task" not in r:
            continue
        entry = out.setdefault(r["mechanism"], {"mechanism": r["mechanism"]})
        label = f"{r['task']} ({PATTERN_OF[r['task']]})"
        if "error" in r:
            entry[label] = "error"
        elif not r["supported"]:
            entry[label] = "n/a"
        else:
            ratio = f" ({r['score'] / base[r['task']]:.2f}x)" if base.get(r["task"]) else ""
            entry[label] = f"{r['score']:.3f}{ratio}"
    return list(out.values())


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    entries = table(rows)
    if not entries:
        return
    metrics = {r["task"]: (r["metric"], r["chance"]) for r in rows if r.get("supported")}
    t = Table(title="CAB quality per mechanism and pattern (figure, and its ratio to softmax)")
    columns = list(dict.fromkeys(k for e in entries for k in e))
    for col in columns:
        t.add_column(col)
    for e in entries:
        t.add_row(*[str(e.get(c, "-")) for c in columns])
    console = Console(width=160)
    console.print(t)
    for task, (metric, chance) in metrics.items():
        console.print(f"  {task}: {metric}; chance / unigram baseline {chance:.3f}")
    for r in rows:
        if "error" in r:
            console.print(f"  error: {r['task']} {r['mechanism']}: {r['error']}")


def report(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from ..report.parts import errors, to_html

    entries = table(rows)
    notes = "".join(f"<li>{r['task']}: {r['metric']}, chance or unigram baseline {r['chance']:.3f}</li>"
                    for r in {r["task"]: r for r in rows if r.get("supported")}.values())
    html = ("<h3>Quality per mechanism and pattern (ratio to softmax in the same run)</h3>" + to_html(entries)
            + f"<ul>{notes}</ul>" + errors(rows))
    return html, {"cab_quality": entries}
