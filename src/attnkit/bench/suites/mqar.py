"""``attnkit bench mqar``: multi-query associative recall against state size.

After "Zoology: Measuring and Improving Recall in Efficient Language Models" and
the Based paper ("Simple linear attention language models balance the
recall-throughput tradeoff"): train Zoology's 2-layer mixer-only model
(:mod:`._mqar_model`) on MQAR data (:mod:`._mqar_data`) for every mechanism,
(L, K) setting and learning rate; keep the best accuracy of the sweep and plot
it against the mechanism's recurrent state size.

Mechanisms are looked up in the registry by *role* (the published picture names
roles: attention, plain elu+1 linear attention, Based, a sliding window, the
gated delta rule; beside them NSA and MoBA, whose queries choose their key blocks
from the content); a role nobody has registered yet gets a "not registered" row.
Each role says how its layer is built (``qk_dim``: Based projects q, k to 16;
``layer``: the Gated DeltaNet layer's short convolutions and gated output norm)
and which learning rates the quick sweep tries for it. ``--mechanisms a,b`` runs
any registered mechanisms instead, with the configuration's default sweep.
``--figure`` runs the Zoology figure (:mod:`.._mqar_figure`): widths 64-256, three seeds, the
attention-free baselines beside the roles, accuracy against width with confidence intervals.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ... import mechanisms, spec
from .._mqar_budget import figure_total, measure_budget
from .._mqar_data import check_mqar_sizes, mqar
from .._mqar_figure import FIGURE, FIGURE_ROLES, chosen_lrs, lr_sweep_config, by_cell, missing_points, over_seeds, \
    point_key, sweep_rows
from .._mqar_points import PointsFile, default_points_path
from .._mqar_model import MQARModel, train
from ..options import UsageError, choices, floats, ints, names, positive_int
from ..machine import machine_info
from ..runner import run_items
from ..store import Store, git_revision

# role -> registered names to look for, parameter overrides, q/k head dim (None: d / heads), layer pieces
# (Mixer options) and the form to run (None: the default). Based's q/k dim 16 is the paper's feature dim
# (153 Taylor features); the Gated DeltaNet layer (fla, Zoology's gated_delta_net mixer) has short
# convolutions on q, k, v and a gated RMS norm.
ROLES = {
    "attention": {"candidates": ("softmax",)},
    "linear (elu+1)": {"candidates": ("linear",)},
    "based": {"candidates": ("based",), "qk_dim": 16},
    "sliding window": {"candidates": ("sliding_window",), "params": {"window": 8}},
    "gated delta rule": {"candidates": ("gated_deltanet",), "layer": {"qkv_conv": True, "gated_norm": True}},
    # content-chosen sparse attention, block sizes scaled to L=64 (NSA: 3 fixed + 2 chosen blocks of 8), run
    # by their reference forms: the same function, and at 64 tokens far cheaper than the sparse kernels' overhead
    "nsa": {"candidates": ("nsa",), "params": {"compress_stride": 8, "select_block": 8, "select_count": 5,
                                                "window": 8}, "form": "reference"},
    "moba": {"candidates": ("moba",), "params": {"block_size": 8, "top_k": 3}, "form": "reference"},
}

# lrs: role -> learning rates of the sweep, "*" for every other role or mechanism. The quick setting: L=64, K=16
# (half the sequence is context; a value waits 1..61 tokens for its query, so a window of 8 misses most of them),
# vocab 128, d=64, 10k examples per epoch, at most 12 epochs. The window gets one lr: it cannot reach the keys.
# NSA's compression MLP (fan-in 16 keys x d) outgrows the other branches at 3e-3 and above under AdamW: it gets 1e-3.
QUICK = dict(vocab=128, d_model=64, heads=1, settings=[[64, 16]],
             lrs={"*": [3e-3, 1e-2], "sliding window": [3e-3], "nsa": [1e-3, 3e-3]},
             epochs=12, train_examples=10_000, test_examples=500, batch=64)
# Zoology's MQAR sweep (Based paper, figure 2): vocab 8192, d in {64, 128}, 2 layers, lr over logspace(-3, -1.5, 4),
# 32 epochs, batch 256.
FULL = dict(vocab=8192, d_model=[64, 128], heads=1,
            settings=[[64, 4], [128, 8], [256, 16], [256, 32], [256, 64]],
            lrs={"*": [1e-3, 3.2e-3, 1e-2, 3.2e-2]}, epochs=32, train_examples=20_000, test_examples=1_000,
            batch=256)


def resolve_roles(roles=ROLES) -> list[dict]:
    """One entry per role: the registered mechanism playing it, or None with the names looked for."""
    registered = set(mechanisms())
    out = []
    for role, r in roles.items():
        candidates = r["candidates"]
        name = next((c for c in candidates if c in registered), None)
        out.append({"role": role, "mechanism": name, "looked_for": list(candidates),
                    "params": _params_for(name, r.get("params", {})) if name else {}, "qk_dim": r.get("qk_dim"),
                    "layer": r.get("layer", {}), "form": r.get("form")})
    return out


def _params_for(name: str, overrides: dict) -> dict:
    """Apply overrides to the spec's parameters whose names contain the override's name (``window`` -> ``window_size``)."""
    params = {}
    for want, value in overrides.items():
        for p in spec(name).params:
            if want in p:
                params[p] = value
    return params


def state_size(name: str, params: dict, seq_len: int, d_model: int, heads: int, qk_dim: int | None,
               tensors: dict | None = None) -> int:
    """Numbers one mixer holds after ``seq_len`` tokens, by the spec's own count (keys and values, and the
    layer's ``tensors`` inputs where the mechanism caches them)."""
    v_dim = d_model // heads
    return int(spec(name).state_size(1, heads, heads, seq_len, qk_dim or v_dim, v_dim, **params,
                                     **(tensors or {})))


def lrs_for(config: dict, role: str) -> list[float]:
    return config["lrs"].get(role, config["lrs"]["*"])


def plan(config: dict, entries: list[dict]) -> list[dict]:
    """Every training, cheapest first: by width, then (L, K), then seed, then role, so a figure cut short
    has every seed of the points it reached; a role nobody registered gets one row per (L, K, width)."""
    widths = config["d_model"] if isinstance(config["d_model"], list) else [config["d_model"]]
    seeds = config.get("seeds", [None])
    items = []
    for d in widths:
        for seq_len, num_kv in config["settings"]:
            for seed in seeds:
                for e in entries:
                    base = {"role": e["role"], "mechanism": e["mechanism"], "L": seq_len, "K": num_kv, "d": d}
                    if seed is not None:
                        base["seed"] = seed
                    if e["mechanism"] is None:
                        if seed == seeds[0]:
                            items.append({**base, "lr": None})
                        continue
                    items.extend({**base, "lr": lr} for lr in lrs_for(config, e["role"]))
    return items


def build_model(entry: dict, d: int, seq_len: int, config: dict, device: str = "cpu") -> MQARModel:
    """The MQAR model of one role at width ``d`` (the role's parameters, form, q/k dim and layer pieces)."""
    call = {**entry["params"], **({"form": entry["form"]} if entry.get("form") else {})}
    return MQARModel(entry["mechanism"], call, config["vocab"], d, seq_len, heads=config["heads"],
                     qk_dim=entry["qk_dim"], **entry["layer"]).to(device)


def measure_item(item: dict, config: dict, entries: dict, device: str = "cpu") -> dict:
    e = entries[item["role"]]
    if item["mechanism"] is None:
        return {"status": "not registered", "looked_for": e["looked_for"]}
    L, K, d, seed = item["L"], item["K"], item["d"], item.get("seed", 0)
    train_data = [t.to(device) for t in mqar(config["train_examples"], L, K, config["vocab"], seed=seed)]
    test_data = [t.to(device) for t in mqar(config["test_examples"], L, K, config["vocab"], seed=1_000_003 + seed)]
    torch.manual_seed(seed)
    model = build_model(e, d, L, config, device)
    result = train(model, train_data, test_data, lr=item["lr"], epochs=config["epochs"], batch=config["batch"], seed=seed)
    result["state_size"] = state_size(item["mechanism"], e["params"], L, d, config["heads"], e["qk_dim"],
                                      model.mixers[-1].tensor_inputs(L))
    result["params"] = e["params"]
    return result


def best_per_setting(rows: list[dict]) -> list[dict]:
    """The best row of each learning-rate sweep, keyed by (role, mechanism, L, K, d, seed)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["role"], r["mechanism"], r["L"], r["K"], r["d"], r.get("seed"))
        if key not in best or r.get("accuracy", -1) > best[key].get("accuracy", -1):
            best[key] = r
    return list(best.values())


def ordering_checks(best: list[dict]) -> list[tuple[str, str]]:
    """The published ordering, checked on the mean best accuracy of each role: (claim, PASS/FAIL/n/a)."""
    acc: dict[str, list[float]] = {}
    for r in best:
        if "accuracy" in r:
            acc.setdefault(r["role"], []).append(r["accuracy"])
    mean = {role: sum(v) / len(v) for role, v in acc.items()}

    def check(claim, roles, ok):
        if not all(r in mean for r in roles):
            return claim, "n/a (" + ", ".join(r for r in roles if r not in mean) + " not run)"
        return claim, "PASS" if ok() else "FAIL"

    a, lin = "attention", "linear (elu+1)"
    return [
        check("attention >= 0.95", [a], lambda: mean[a] >= 0.95),
        check("linear (elu+1) <= attention - 0.2", [a, lin], lambda: mean[lin] <= mean[a] - 0.2),
        check("based >= linear (elu+1) + 0.1", ["based", lin], lambda: mean["based"] >= mean[lin] + 0.1),
        check("sliding window < attention - 0.1", [a, "sliding window"],
              lambda: mean["sliding window"] < mean[a] - 0.1),
        check("gated delta rule >= attention - 0.1", [a, "gated delta rule"],
              lambda: mean["gated delta rule"] >= mean[a] - 0.1),
    ]


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="MQAR: best accuracy of the learning-rate sweep")
    for col in ("role", "mechanism", "L", "K", "d", "lr", "accuracy", "state size", "epochs", "status", "s"):
        table.add_column(col)
    for r in best_per_setting(rows):
        if "accuracy" not in r:
            table.add_row(r["role"], str(r["mechanism"]), str(r["L"]), str(r["K"]), str(r["d"]), "-",
                          r.get("status") or r.get("error", "?"), "-", "-", "-", "-")
            continue
        table.add_row(r["role"], r["mechanism"], str(r["L"]), str(r["K"]), str(r["d"]), f"{r['lr']:g}",
                      f"{r['accuracy']:.3f}", str(r["state_size"]), str(r["epochs"]), r.get("status", "-"),
                      str(r["seconds"]))
    console = Console(width=140)
    console.print(table)
    points = over_seeds(best_per_setting(rows))
    if any(p["seeds"] > 1 for p in points):
        figure = Table(title="MQAR accuracy against width: mean over seeds +- 95% interval (the Zoology figure)")
        for col in ("role", "mechanism", "L", "K", "d", "accuracy", "+-", "seeds", "state size"):
            figure.add_column(col)
        for p in points:
            figure.add_row(p["role"], p["mechanism"], str(p["L"]), str(p["K"]), str(p["d"]), f"{p['accuracy']:.3f}",
                           "-" if p["ci95"] is None else f"{p['ci95']:.3f}", str(p["seeds"]), str(p["state_size"]))
        console.print(figure)
    for claim, verdict in ordering_checks(best_per_setting(rows)):
        console.print(f"  {verdict:>5}  {claim}")


def figure_state(config: dict, entries: list[dict], points: PointsFile) -> dict:
    """The figure as the points file holds it: what is finished of the plan, each role's chosen rate,
    accuracy over seeds per (role, L, K, d) with 95% intervals, the published ordering in each
    (L, K, d) cell, and every planned training not finished yet. Both the ``--figure`` summary and
    ``attnkit report`` are drawn from it."""
    registered = [e for e in entries if e["mechanism"] is not None]
    rows, aside = points.points(config, {e["role"]: e for e in registered})
    figure, swept = with_chosen_rates(config, registered, rows)
    waiting = [e for e in registered if e not in swept]
    done = {point_key(r) for r in rows}
    sweep = plan(lr_sweep_config(config), registered)
    figure_items = plan(figure, swept)
    cells = {(it["role"], it["L"], it["K"], it["d"], it["seed"]) for it in plan(config, registered)}
    timed = [r["cpu_seconds"] for r in rows if "cpu_seconds" in r]
    # the figure's points: each swept role at its chosen rate (a role still in its sweep has none yet)
    best = [r for r in rows if any(r["role"] == e["role"] and r["lr"] in lrs_for(figure, e["role"]) for e in swept)]
    lr_of = {(r["role"], r["L"], r["K"], r["d"]): r["lr"] for r in best}
    means = [{**p, "lr": lr_of[p["role"], p["L"], p["K"], p["d"]]}
             for p in sorted(over_seeds(best), key=lambda p: (p["role"], p["L"], p["d"]))]
    checks = []
    for (L, K, d), cell in by_cell(means).items():
        seeds = sorted({p["seeds"] for p in cell})
        checks += [{"L": L, "K": K, "d": d, "seeds": ",".join(map(str, seeds)), "claim": claim, "verdict": verdict}
                   for claim, verdict in ordering_checks(cell)]
    return {"path": str(points.path), "aside": aside,
            "sweep_done": sum(point_key(it) in done for it in sweep), "sweep_planned": len(sweep),
            "points_done": sum(point_key(it) in done for it in figure_items), "points_planned": len(cells),
            "hours": sum(r["seconds"] for r in rows) / 3600, "cpu_hours": sum(timed) / 3600, "timed": len(timed),
            "lrs": {role: lr[0] for role, lr in figure["lrs"].items() if role in {e["role"] for e in swept}},
            "waiting": [e["role"] for e in waiting],
            "unregistered": [e["role"] for e in entries if e["mechanism"] is None],
            "seeds": [{k: r.get(k) for k in ("role", "mechanism", "L", "K", "d", "seed", "accuracy", "state_size")}
                      for r in best],
            "means": means, "checks": checks,
            "missing": missing_points(sweep + figure_items + plan(config, waiting), rows)}


def print_figure(state: dict) -> None:
    """The ``--figure`` summary of :func:`figure_state` on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    console.print(f"mqar --figure: {state['sweep_done']} of {state['sweep_planned']} trainings of the "
                  f"learning-rate sweep and {state['points_done']} of {state['points_planned']} "
                  f"points of the figure (role, L, K, d, seed) finished; {state['hours']:.1f} h of training (wall"
                  + (f"; CPU {state['cpu_hours']:.1f} h over the {state['timed']} that record it"
                     if state["timed"] else "")
                  + f") in {state['path']}"
                  + (f"; {state['aside']} lines of other setups or roles left aside" if state["aside"] else ""))
    console.print("mqar --figure: learning rates "
                  + (", ".join(f"{role} {lr:g}" for role, lr in state["lrs"].items()) or "-"))
    if state["waiting"]:
        console.print("mqar --figure: sweep not finished, so no figure points yet: " + ", ".join(state["waiting"]))
    if state["unregistered"]:
        console.print("  not registered, so not in the figure: " + ", ".join(state["unregistered"]))
    figure = Table(title="MQAR accuracy against width: mean over seeds +- 95% interval (the Zoology figure)")
    for col in ("role", "mechanism", "L", "K", "d", "lr", "accuracy", "+-", "seeds", "state size"):
        figure.add_column(col)
    for p in state["means"]:
        figure.add_row(p["role"], p["mechanism"], str(p["L"]), str(p["K"]), str(p["d"]), f"{p['lr']:g}",
                       f"{p['accuracy']:.3f}", "-" if p["ci95"] is None else f"{p['ci95']:.3f}", str(p["seeds"]),
                       str(p["state_size"]))
    console.print(figure)
    console.print("The published ordering in each (L, K, d) cell, on the mean over the seeds present:")
    cell = None
    for c in state["checks"]:
        if (c["L"], c["K"], c["d"]) != cell:
            cell = (c["L"], c["K"], c["d"])
            console.print(f"  L={c['L']} K={c['K']} d={c['d']} (seeds per role: {c['seeds']})")
        console.print(f"    {c['verdict']:>5}  {c['claim']}")
    missing = state["missing"]
    if missing:
        console.print(f"Not finished yet ({sum(len(m['roles']) for m in missing)} points of (role, L, K, d, seed)):")
        for m in missing:
            console.print(f"  seed {m['seed']} L={m['L']} K={m['K']} d={m['d']}: {', '.join(m['roles'])}")


def add_arguments(p) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the CPU configuration (default; <= 15 min on 2 cores)")
    size.add_argument("--full", action="store_true", help="Zoology's sizes (hours)")
    size.add_argument("--figure", action="store_true",
                      help="the Zoology figure: widths 64,128,256 x 3 seeds x L 64-256 (K up to 64), the attention-free "
                           "baselines too; accuracy vs width with 95%% intervals (many hours on 2 cores: each run continues from "
                           "--points and adds to it)")
    p.add_argument("--budget", action="store_true",
                   help="with --figure: time a few training steps of every role, width and (L, K) and print what "
                        "each point and the whole figure cost (trains nothing)")
    p.add_argument("--summary", action="store_true",
                   help="with --figure: print the figure from the points file (what is finished and what is "
                        "missing) and train nothing")
    p.add_argument("--points", type=Path, default=default_points_path(),
                   help="with --figure: the JSON-lines file of finished points; a run skips the points it holds, "
                        "appends each one it finishes, and draws the figure from all of them (default: the "
                        "repository's docs/mqar-figure.jsonl, else ./mqar-figure.jsonl)")
    p.add_argument("--mechanisms", type=names, default=None, help="comma list of registered names instead of the roles")
    p.add_argument("--roles", type=choices({**ROLES, **FIGURE_ROLES}, "role"), default=None,
                   help=f"comma list, a subset of the roles {','.join({**ROLES, **FIGURE_ROLES})} (the last ones: --figure's)")
    p.add_argument("--lrs", type=floats, default=None,
                   help="comma list of learning rates for every role (default: the configuration's per-role sweep)")
    p.add_argument("--widths", type=ints, default=None,
                   help=f"with --figure: comma list, the model widths to run, a subset of {','.join(map(str, FIGURE['d_model']))} "
                        "(the learning rates are still chosen at the first)")
    p.add_argument("--jobs", type=positive_int, default=2,
                   help="trainings run at once, each in its own process with threads/jobs threads (default 2: "
                        "one small model per core is faster than both cores on one)")


def configure(args) -> tuple[dict, list[dict]]:
    """The configuration and role entries, validated up front (unknown mechanisms, impossible sizes)."""
    figure = getattr(args, "figure", False)
    if getattr(args, "budget", False) and not figure:
        raise UsageError("--budget times the figure's points: give it with --figure")
    if getattr(args, "summary", False) and not figure:
        raise UsageError("--summary prints the figure's points: give it with --figure")
    if getattr(args, "widths", None) and not figure:
        raise UsageError("--widths chooses the figure's model widths: give it with --figure")
    config = dict(FIGURE if figure else FULL if args.full else QUICK)
    if getattr(args, "widths", None):
        unknown = [w for w in args.widths if w not in config["d_model"]]
        if unknown:
            raise UsageError(f"--widths: {','.join(map(str, unknown))} not among the figure's widths "
                             f"{','.join(map(str, config['d_model']))}")
        config["sweep_width"] = config["d_model"][0]
        config["d_model"] = [w for w in config["d_model"] if w in args.widths]
    if args.mechanisms:
        for n in args.mechanisms:
            if not spec(n).supports(causal=True, cross=False):  # spec() names close matches for unknown names
                raise ValueError(f"--mechanisms: {n!r} does not support causal self-attention, which MQAR needs")
        entries = [{"role": n, "mechanism": n, "looked_for": [n], "params": {}, "qk_dim": None, "layer": {}}
                   for n in args.mechanisms]
    else:
        every = {**ROLES, **FIGURE_ROLES}
        roles = every if figure else ROLES
        if args.roles:
            roles = {r: every[r] for r in args.roles}
        entries = resolve_roles(roles)
    if args.lrs:
        config["lrs"] = {"*": args.lrs}
    for seq_len, num_kv in config["settings"]:
        check_mqar_sizes(seq_len, num_kv, config["vocab"])
    config["mechanisms"] = [[e["role"], e["mechanism"], e["params"], e["qk_dim"], e["layer"]] for e in entries]
    return config, entries


def run(args) -> int:
    config, entries = configure(args)
    if args.budget:
        return print_budget(config, entries, args)
    if args.figure:
        return run_figure(config, entries, args)
    code, run_id = _run(config, entries, args)
    print_summary(Store(args.db).rows(run_id))
    return code


def print_budget(config: dict, entries: list[dict], args) -> int:
    """``--figure --budget``: each point's timed cost and the figure's total if no training stops early."""
    from rich.console import Console

    console = Console(width=140)
    console.print("mqar --figure --budget: CPU seconds of a training step (median of 3), of one evaluation, of a "
                  f"training of {config['epochs']} epochs; {torch.get_num_threads()} thread(s)")

    def show(r):
        console.print(f"  {r['role']:>16} L={r['L']:<3} d={r['d']:<3} step {r['step_s']:.4f} s  eval {r['eval_s']:.2f} s"
                      f"  training {r['training_s'] / 60:.1f} min  (GEMM {r['gemm_gflops']} GFLOP/s)")

    rows = measure_budget(entries, partial(build_model, config=config, device=args.device), config,
                          device=args.device, report=show)
    total = figure_total(rows, config, len(lrs_for(config, "*")))
    for role in dict.fromkeys(r["role"] for r in rows):
        console.print(f"  {role:>16}: {sum(r['training_s'] for r in rows if r['role'] == role) / 3600:.2f} h per seed")
    console.print(f"mqar --figure --budget: {total['per_seed_s'] / 3600:.1f} core-hours per seed, the sweep's other rates "
                  f"{total['sweep_s'] / 3600:.1f}, in all {total['total_s'] / 3600:.1f} for {len(config['seeds'])} seeds "
                  f"at widths {','.join(map(str, config['d_model']))} if no training stops early")
    return 0


def _run(config: dict, entries: list[dict], args, items: list[dict] | None = None, on_row=None,
         machine: dict | None = None) -> tuple[int, int]:
    by_role = {e["role"]: e for e in entries}
    return run_items("mqar", config, plan(config, entries) if items is None else items,
                     partial(measure_item, config=config, entries=by_role, device=args.device), args,
                     describe=lambda it: f"{it['mechanism'] or it['role']} L={it['L']} d={it['d']} "
                                         f"seed={it.get('seed')} lr={it['lr']}", jobs=args.jobs, on_row=on_row,
                     machine=machine)


def run_figure(config: dict, entries: list[dict], args) -> int:
    """``--figure``: each role's learning-rate sweep at the cheapest point, then every point at the chosen
    rate, cheapest first. Trainings already in the points file are skipped, each finished one is appended
    to it, and the summary is drawn from the whole file (:func:`print_figure`). With ``--summary`` only
    the summary."""
    points = PointsFile(args.points)
    registered = [e for e in entries if e["mechanism"] is not None]
    points.points(config, {e["role"]: e for e in registered})  # a damaged file is refused before any training
    code = 0
    if not args.summary:
        code = _run_missing(lr_sweep_config(config), registered, args, points)
        if code:
            return code
        rows, _ = points.points(config, {e["role"]: e for e in registered})
        code = _run_missing(*with_chosen_rates(config, registered, rows), args, points)
    print_figure(figure_state(config, entries, points))
    return code


def with_chosen_rates(config: dict, registered: list[dict], rows: list[dict]) -> tuple[dict, list[dict]]:
    """The figure's configuration with each role's rate from its finished sweep in ``rows``, and the roles
    that have one (a role whose sweep is not complete waits: a rate is chosen from all of the sweep or not
    at all)."""
    sweep = lr_sweep_config(config)
    done = sweep_rows(rows, sweep)
    complete = [e["role"] for e in registered
                if {r["lr"] for r in done if r["role"] == e["role"]} >= set(lrs_for(sweep, e["role"]))]
    lrs = chosen_lrs(best_per_setting(done), complete)
    return {**config, "lrs": {**config["lrs"], **lrs}}, [e for e in registered if e["role"] in lrs]


def figure_from_file(path) -> dict | None:
    """:func:`figure_state` of the full figure (every role, the figure's configuration) from the points
    file at ``path``, or None when the file is missing or empty (``attnkit report``)."""
    points = PointsFile(path)
    if not points.lines():
        return None
    entries = resolve_roles({**ROLES, **FIGURE_ROLES})
    return figure_state(dict(FIGURE), entries, points)


def _run_missing(config: dict, entries: list[dict], args, points: PointsFile) -> int:
    """Run the trainings of ``config`` the points file does not hold yet, appending each as it finishes."""
    by_role = {e["role"]: e for e in entries}
    rows, _ = points.points(config, by_role)
    done = {point_key(r) for r in rows}
    todo = [it for it in plan(config, entries) if point_key(it) not in done]
    if not todo:
        return 0
    print(f"mqar --figure: {len(todo)} trainings to run ({config.get('stage', 'the figure')}), "
          f"points appended to {points.path}")
    machine, commit = machine_info(device=args.device), git_revision()  # the code this process runs

    def append(item, figures):
        points.append(item, figures, config, by_role[item["role"]], machine, commit)

    code, _ = _run(config, entries, args, items=todo, on_row=append, machine=machine)
    return code


def report(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from ..report import plots
    from ..report.parts import image, to_html

    best = best_per_setting(rows)
    table = [{k: r.get(k) for k in ("role", "mechanism", "L", "K", "d", "lr", "accuracy", "state_size", "epochs",
                                    "seconds", "status")} for r in best]
    checks = [{"claim": c, "verdict": v} for c, v in ordering_checks(best)]
    points = over_seeds(best)
    figure = []
    if any(p["seeds"] > 1 for p in points):
        figure = [image(plots.accuracy_vs_width(points), "MQAR accuracy vs model width (mean over seeds, 95% intervals)"),
                  "<h3>Accuracy against width, over seeds</h3>", to_html(points, {})]
    parts = [
        image(plots.accuracy_vs_state(best), "MQAR accuracy vs state size"),
        *figure,
        "<h3>Best accuracy of each learning-rate sweep</h3>", to_html(table, {"not registered": "refused"}),
        "<h3>The published ordering</h3>", to_html(checks, {"PASS": "ok", "FAIL": "bad"}),
    ]
    return "\n".join(parts), {"mqar": table, "mqar_ordering": checks}
