"""``attnkit bench sparse``: sparsity against quality, prefill and decode separately.

After "The Sparse Frontier: Sparse Attention Trade-offs in Transformer LLMs":
training-free sparse attention applied to a model trained dense, measured
separately in the two phases of inference. The model is attnkit's small
DecoderLM (``attnkit.models``) trained with softmax attention on the
Shakespeare corpus (``attnkit.data.shakespeare``; cached in the data folder and
reused). Each held-out window is a prompt of ``prompt`` tokens followed by
``score`` tokens whose next-token loss is the quality measure:

- **prefill**: the prompt runs through the model with the sparse mechanism, the
  scored tokens decode densely over the prompt's whole KV cache;
- **decode**: the prompt runs densely, the scored tokens decode with the sparse
  mechanism over the dense KV cache (sinks + window is StreamingLLM's cache).

The window patterns are the same at every position, so each phase is one call
of the dense model under a mask (the pattern in one phase's rows, causal in the
other's); Quest reads the prompt with every page kept (dense) and decodes from
its own state.

The KV-cache policies (``h2o``, ``tova``, ``knorm``, ``snapkv``) drop keys for
good, so a dense decode cannot follow them. Their **decode** rows prefill the
prompt with full attention, compress the cache at its end (accumulated
attention, the last query's attention, key norms, or SnapKV's
observation-window vote) and decode under the policy; the evicting ones also
get a **prefill+decode** row, the policy from the first token on (as H2O's own
evaluation masks the prompt). SnapKV has no
prefill row: its prompt is always prefilled densely.

With ``--speed`` the suite instead times the training-free sparse methods
(:mod:`attnkit.bench.free_sparse_runs`), prefill and decode apart: each prefill
estimator (estimation included) against dense causal SDPA on random inputs
(B=1, H=8, D=64, fp32; block top-k and vertical-slash sized to ``--sparsity``,
XAttention and FlexPrefill at their papers' thresholds), and a decode step of
Quest, Loki and Adamas reading ``--fraction`` of the cache against attnkit's dense
decode step and SDPA on the cache, with density, attention-mass recall and
output error. With ``--lm-recall`` it measures recall and error of every
method on q, k, v captured from the trained LM (held-out text at ``--n``
tokens, the text repeated end to end when shorter; Loki's principal
directions from the keys of 4096 training tokens). With ``--minilm`` it measures
the prefill estimators on q, k, v captured from the pretrained MiniLM encoder at its
maximum length (:mod:`attnkit.bench.free_sparse_minilm`: HyperAttention non-causal,
the causal-only ones as a causal probe).

Sparsity is measured by running the mechanism (uniform scores, identity values):
the fraction of causal (query, key) pairs of that phase it does not attend.
Quality is ``ppl_dense / ppl_sparse`` (1.0 = no loss); the report gives, per
method and phase, the highest sparsity that keeps quality >= 0.99.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ... import attention, mechanisms
from ..options import ints, names, positive_float, positive_int
from ..runner import run_items
from ..store import Store, canonical, default_db_path


def _h2o(budget, phase, prompt):
    return {"heavy": budget // 2, "recent": budget - budget // 2, "start": prompt if phase == "decode" else 0}


def _snapkv(budget, phase, prompt):
    return {"prompt": prompt, "capacity": budget, "window": max(1, min(32, budget // 2)), "kernel": 5}


# method -> (mechanism, params(swept value, phase, prompt length), phases); the sweep is fractions of the
# prompt: a window, a number of keys read (Quest: in pages of 16), or a cache budget (H2O splits it evenly between heavy hitters and recent tokens, as
# the paper does; SnapKV's observation window is 32 tokens, at most half the budget).
METHODS = {
    "sliding_window": ("sliding_window", lambda w, phase, p: {"window": w}, ("prefill", "decode")),
    "sinks_window": ("sinks_window", lambda w, phase, p: {"window": w, "sinks": 4}, ("prefill", "decode")),
    "dilated_window": ("dilated_window", lambda w, phase, p: {"window": w, "dilation": 2}, ("prefill", "decode")),
    "h2o": ("h2o", _h2o, ("decode", "prefill+decode")),
    "tova": ("tova", lambda b, phase, p: {"budget": b, "start": p if phase == "decode" else 0},
             ("decode", "prefill+decode")),
    "knorm": ("knorm", lambda b, phase, p: {"budget": b, "start": p if phase == "decode" else 0},
              ("decode", "prefill+decode")),
    "snapkv": ("snapkv", _snapkv, ("decode",)),
    "quest": ("quest", lambda b, phase, p: {"page": 16, "top_k": max(1, b // 16)}, ("decode",)),
}
EVICTING = {"h2o", "tova", "knorm", "snapkv"}  # mechanisms whose cache a dense model cannot continue from
OWN_DECODE_STATE = {"quest"}  # decode methods continuing a state of their own (prompt read with every page kept)
FRACTIONS = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32]
QUICK = dict(dim=128, layers=4, heads=4, level="char", context=256, train_minutes=3.0, batch=32, lr=3e-3,
             prompt=192, score=64, windows=48)
FULL = dict(QUICK, dim=256, layers=6, context=1024, train_minutes=30.0, prompt=768, score=256, windows=128)


def kept(mechanism: str, params: dict, n: int) -> torch.Tensor:
    """The ``(n, n)`` boolean pattern of key positions each query reads under ``mechanism`` (probed by running it)."""
    with torch.no_grad():
        out = attention(torch.zeros(1, 1, n, 8), torch.zeros(1, 1, n, 8), torch.eye(n)[None, None], mechanism,
                        causal=True, **params)
    return out[0, 0] > 0


def sparsity(mechanism: str, params: dict, n: int, rows: slice) -> float:
    """Fraction of the causal pairs of query rows ``rows`` that ``mechanism`` leaves out (probed by running it)."""
    causal = float(torch.ones(n, n).tril()[rows].sum())
    return 1.0 - float(kept(mechanism, params, n)[rows].sum()) / causal


def model_config(c: dict, vocab: int, mixer):
    from ...models import ModelConfig

    return ModelConfig(vocab_size=vocab, dim=c["dim"], heads=c["heads"], schedule="F" * c["layers"],
                       mixers={"F": mixer})


def trained_model(c: dict, args):
    """The dense LM of this configuration: loaded from the cache, or trained (and cached) now."""
    from ...data import shakespeare
    from ...data.codecs import make_codec
    from ...models import DecoderLM
    from ...training.lm import TrainConfig, load_checkpoint, save_checkpoint, train

    keys = ("dim", "layers", "heads", "level", "context", "train_minutes", "batch", "lr")
    tag = hashlib.sha1(canonical({k: c[k] for k in keys}).encode()).hexdigest()[:10]
    folder = Path(args.db).parent if args.db else default_db_path().parent
    path = folder / f"sparse_lm_{tag}.pt"
    train_text, held_text = shakespeare.load_split()
    if path.exists():
        model, codec, _ = load_checkpoint(path)
        print(f"sparse: using the trained LM {path}")
    else:
        print(f"sparse: training the dense LM for {c['train_minutes']} min (cached as {path})")
        codec = make_codec(c["level"], train_text)
        model = DecoderLM(model_config(c, codec.vocab_size, "softmax")).to(args.device)
        cfg = TrainConfig(context=c["context"], batch=c["batch"], lr=c["lr"], minutes=c["train_minutes"])
        train(model, codec.encode(train_text), cfg)
        save_checkpoint(path, model, codec, cfg)
        model.eval()
    return model, codec.encode(held_text)


def held_out_windows(ids: torch.Tensor, c: dict) -> torch.Tensor:
    n = c["prompt"] + c["score"] + 1
    starts = torch.linspace(0, ids.numel() - n, c["windows"]).long()
    return torch.stack([ids[s:s + n] for s in starts.tolist()])


def method_loss(model, c: dict, method: str, phase: str, params: dict, windows: torch.Tensor, prompt: int):
    """The scored tokens' loss of ``model``'s weights with ``method`` in ``phase``, and the rows it thins.

    An evicting policy holds the cache from the prompt on (its params say where it starts). Quest,
    a decode method with a state of its own (page bounds), reads the prompt under the same mechanism
    with every page kept, which is dense attention, and decodes from that state. A pattern (the
    windows) is the same at every position, so its phase is one masked call of the dense model: the
    pattern's rows in the prompt (prefill) or after it (decode), causal attention elsewhere. (A
    window's state keeps only the window, so a dense decode could not continue from it.)
    """
    mech, _, _ = METHODS[method]
    n = windows.shape[1] - 1
    if mech in EVICTING or mech in OWN_DECODE_STATE:
        sparse = _with_mechanism(model, c, mech, params)
        if mech in EVICTING:
            return loss(sparse, sparse, windows, prompt), slice(prompt, n) if phase == "decode" else slice(0, n)
        reader = _with_mechanism(model, c, mech, {**params, "top_k": -(-n // params["page"])})
        return loss(reader, sparse, windows, prompt), slice(prompt, n)
    pattern, causal = kept(mech, params, n), torch.ones(n, n, dtype=torch.bool).tril()
    in_prompt = (torch.arange(n) < prompt)[:, None]
    mask = torch.where(in_prompt, pattern, causal) if phase == "prefill" else torch.where(in_prompt, causal, pattern)
    with torch.no_grad():
        logits = model(windows[:, :-1], mask=mask.to(windows.device))
    value = float(F.cross_entropy(logits[:, prompt:].flatten(0, 1), windows[:, prompt + 1:].flatten()))
    return value, slice(0, prompt) if phase == "prefill" else slice(prompt, n)


def _with_mechanism(model, c: dict, mechanism: str, params: dict):
    from ...models import DecoderLM

    m = DecoderLM(model_config(c, model.config.vocab_size, {"mechanism": mechanism, **params}))
    m = m.to(next(model.parameters()).device).eval()
    m.load_state_dict(model.state_dict())
    return m


@torch.no_grad()
def loss(first, second, windows: torch.Tensor, prompt: int) -> float:
    """Mean next-token loss of the scored tokens: ``first`` reads the prompt, ``second`` continues from its state."""
    _, state = first(windows[:, :prompt], return_state=True)
    logits, _ = second(windows[:, prompt:-1], state=state, return_state=True)
    return float(F.cross_entropy(logits.flatten(0, 1), windows[:, prompt + 1:].flatten()))


def plan(c: dict) -> tuple[list[dict], list[str]]:
    registered = set(mechanisms())
    items, missing = [{"method": "dense", "phase": "both", "value": None}], []
    for method, (mech, _, phases) in METHODS.items():
        if mech not in registered:
            missing.append(f"{method}: mechanism {mech!r} is not registered")
            items.append({"method": method, "phase": "both", "value": None})
            continue
        for phase in phases:
            items += [{"method": method, "phase": phase, "value": max(2, round(c["prompt"] * f))} for f in FRACTIONS]
    return items, missing


def measurer(c: dict, args):
    model, held = None, None
    cache: dict = {}

    def measure(item: dict) -> dict:
        nonlocal model, held
        if item["method"] != "dense" and item["value"] is None:
            return {"status": "not registered"}
        if model is None:
            model, held = trained_model(c, args)  # trains with the run's threads
            model = model.to(args.device)
        threads = torch.get_num_threads()
        # Evaluation is many small ops (dim 128; the cache policies decode token by token): one
        # thread is faster (28 s -> 1.5 s per H2O item with a busy second core) and frees the other core.
        torch.set_num_threads(1)
        try:
            return evaluate(item)
        finally:
            torch.set_num_threads(threads)

    def evaluate(item: dict) -> dict:
        if "dense" not in cache:
            cache["windows"] = held_out_windows(held, c).to(args.device)
            cache["dense"] = loss(model, model, cache["windows"], c["prompt"])
        if item["method"] == "dense":
            return {"loss": cache["dense"], "perplexity": math.exp(cache["dense"]), "sparsity": 0.0, "quality": 1.0}
        mech, make_params, _ = METHODS[item["method"]]
        n, p = c["prompt"] + c["score"], c["prompt"]
        params = make_params(item["value"], item["phase"], p)
        value, rows = method_loss(model, c, item["method"], item["phase"], params, cache["windows"], p)
        return {"loss": value, "perplexity": math.exp(value), "params": params,
                "sparsity": sparsity(mech, params, n, rows), "quality": math.exp(cache["dense"] - value)}

    return measure


def frontier(rows: list[dict], keep: float = 0.99) -> list[dict]:
    """Per method and phase: the highest sparsity whose quality stays >= ``keep``."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if r.get("phase") in ("prefill", "decode", "prefill+decode") and "quality" in r:
            best = out.setdefault((r["method"], r["phase"]), {"method": r["method"], "phase": r["phase"],
                                                               f"max sparsity at quality>={keep}": 0.0})
            if r["quality"] >= keep:
                key = f"max sparsity at quality>={keep}"
                best[key] = max(best[key], round(r["sparsity"], 3))
    return list(out.values())


def add_arguments(p) -> None:
    p.add_argument("--full", action="store_true", help="a larger LM and longer windows")
    p.add_argument("--train-minutes", type=positive_float, default=None, help="training budget of the dense LM")
    p.add_argument("--speed", action="store_true", help="time the training-free methods (prefill and decode)")
    p.add_argument("--lm-recall", action="store_true", help="recall of the training-free methods on the LM's q, k, v")
    p.add_argument("--checkpoint", default=None, help="--lm-recall: an attnkit LM checkpoint instead of the suite's LM")
    p.add_argument("--minilm", action="store_true",
                   help="density and recall of the prefill estimators on q, k, v of the pretrained MiniLM encoder at "
                        "512 tokens (the [hf] extra)")
    p.add_argument("--seer-checkpoint", default=None,
                   help="--lm-recall: also SeerAttention-R in decode, with the gates of this gated LM (attnkit train "
                        "seer-r --out, trained on --checkpoint)")
    p.add_argument("--n", type=ints, default=[4096], help="--speed / --lm-recall: comma list of lengths")
    p.add_argument("--memory", action="store_true",
                   help="peak memory of each prefill call (a fresh subprocess each, CPU); with --speed also the timings")
    p.add_argument("--phases", type=names, default=["prefill", "decode"], help="--speed: prefill,decode")
    p.add_argument("--methods", type=names, default=None,
                   help="--speed: comma list of the training-free methods to time (default: all of the phase)")
    p.add_argument("--sparsity", type=positive_float, default=0.9, help="--speed: block sparsity of the sized methods")
    p.add_argument("--fraction", type=positive_float, default=0.125, help="decode: share of the cache a step reads")
    p.add_argument("--repeats", type=positive_int, default=2, help="--speed: timed rounds (best kept)")
    p.add_argument("--steps", type=positive_int, default=8, help="--speed: decode steps per timed round")
    p.add_argument("--queries", type=positive_int, default=16, help="--lm-recall: decoded positions per layer")
    p.add_argument("--curves", action="store_true",
                   help="quality vs density of the training-free methods on the LM (--checkpoint), per seed")
    p.add_argument("--seeds", type=positive_int, default=3, help="--curves: seeds (each its own held-out windows)")
    p.add_argument("--windows", type=positive_int, default=8, help="--curves: held-out windows per seed")
    p.add_argument("--score", type=positive_int, default=256, help="--curves: scored positions at each window's end")


def run_free_sparse(args) -> int:
    from .. import free_sparse_runs as fs

    from .. import free_sparse_curves as curves

    if args.curves:
        chosen = args.methods or list(curves.SWEEPS)
        unknown = sorted(set(chosen) - set(curves.SWEEPS))
        if unknown:
            from ..options import UsageError

            raise UsageError(f"--methods: unknown {unknown}; expected names from {list(curves.SWEEPS)}")
        items = [{"section": "curves", "N": n, "method": m, "seed": s}
                 for n in args.n for m in chosen for s in range(args.seeds)]
    elif args.lm_recall:
        items = [{"section": "lm-recall", "N": n} for n in args.n]
    elif args.minilm:
        items = [{"section": "minilm"}]
    else:
        items = [{"section": phase, "N": n} for n in args.n for phase in args.phases] if args.speed else []
        if args.memory and "prefill" in args.phases and args.device == "cpu":
            items += [{"section": "prefill-memory", "N": n} for n in args.n]
    config = {"n": args.n, "phases": args.phases, "methods": args.methods, "sparsity": args.sparsity,
              "fraction": args.fraction, "repeats": args.repeats, "steps": args.steps, "checkpoint": args.checkpoint,
              "seer_checkpoint": args.seer_checkpoint,
              "device": args.device, "seeds": args.seeds, "windows": args.windows, "score": args.score}

    chosen = [] if args.curves else args.methods or [*fs.PREFILL, *fs.DECODE]
    unknown = sorted(set(chosen) - {*fs.PREFILL, *fs.DECODE})
    if unknown:
        from ..options import UsageError

        raise UsageError(f"--methods: unknown {unknown}; expected names from {[*fs.PREFILL, *fs.DECODE]}")
    prefill, decode = [m for m in fs.PREFILL if m in chosen], [m for m in fs.DECODE if m in chosen]

    def measure(item):
        if item["section"] == "prefill":
            return {"rows": fs.prefill_speed(item["N"], prefill, args.sparsity, args.repeats, args.device)}
        if item["section"] == "prefill-memory":
            from ..prefill_memory import prefill_memory

            return {"rows": prefill_memory(item["N"], prefill, args.sparsity)}
        if item["section"] == "decode":
            return {"rows": fs.decode_speed(item["N"], decode, args.fraction, args.steps, args.repeats, args.device)}
        if item["section"] == "minilm":
            from ...data import shakespeare
            from ..free_sparse_minilm import minilm_rows

            return {"rows": minilm_rows(shakespeare.load_split()[1], prefill, args.sparsity)}
        model, held, calibration = lm_and_text(args)
        if item["section"] == "curves":
            return {"rows": curves.curve_rows(model, held, method=item["method"], n=item["N"], score=args.score,
                                              count=args.windows, seed=item["seed"])}
        seer = fs.seer_gates(args.seer_checkpoint) if args.seer_checkpoint else None
        return {"rows": fs.lm_recall(model, held, calibration, item["N"], args.fraction, args.sparsity, args.queries,
                                     seer, args.methods)}

    code, run_id = run_items("sparse", config, items, measure, args,
                             describe=lambda it: " ".join(f"{k}={v}" for k, v in it.items()))
    if args.curves:
        for r in curves.summarise(flat_rows(Store(args.db).rows(run_id))):
            print(f"  {r['phase']:>7} {r['method']:>16} {r['setting']}: density {r['density']:.3f} "
                  f"quality {r['quality']:.4f} +- {r['quality_ci95']:.4f} ({r['seeds']} seeds)")
    return code


def flat_rows(rows: list[dict]) -> list[dict]:
    """The per-method rows of the training-free sections (stored as a list per item), with their section."""
    return [{"section": r.get("section"), **x} for r in rows for x in r.get("rows", []) if isinstance(x, dict)]


def lm_and_text(args):
    """The LM (a checkpoint, or the suite's quick LM, trained now if not cached), held-out and training ids."""
    from ...data import shakespeare
    from ...training.lm import load_checkpoint

    train_text, held_text = shakespeare.load_split()
    if args.checkpoint:
        model, codec, _ = load_checkpoint(args.checkpoint)
    else:
        from ...data.codecs import make_codec

        model, _ = trained_model(dict(QUICK), args)
        codec = make_codec(QUICK["level"], train_text)
    return model.to(args.device).eval(), codec.encode(held_text).to(args.device), codec.encode(train_text).to(args.device)


def run(args) -> int:
    if args.speed or args.memory or args.lm_recall or args.curves or args.minilm:
        return run_free_sparse(args)
    c = dict(FULL if args.full else QUICK)
    if args.train_minutes is not None:
        c["train_minutes"] = args.train_minutes
    items, missing = plan(c)
    for m in missing:
        print(f"sparse: not run: {m}")
    code, run_id = run_items("sparse", c, items, measurer(c, args), args,
                             describe=lambda it: f"{it['method']} {it['phase']} {it['value']}")
    rows = Store(args.db).rows(run_id)
    for r in rows:
        if "quality" in r:
            print(f"  {r['method']:>15} {r['phase']:>7} value={r['value']!s:>5} sparsity={r['sparsity']:.3f} "
                  f"loss={r['loss']:.4f} quality={r['quality']:.4f}")
    print(json.dumps(frontier(rows), indent=1))
    return code


def report(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from ..report import plots
    from ..report.parts import errors, image, to_html

    from ..free_sparse_curves import summarise

    curves = [r for r in rows if "sparsity" in r and "quality" in r]
    free = flat_rows(rows)
    summary = summarise(free)
    speed = [r for r in free if r["section"] in ("prefill", "decode") and "N" in r]
    for r in speed:
        r["speed vs SDPA"] = r.get("speedup") or (1 / r["ratio_to_sdpa"] if r.get("ratio_to_sdpa") else None)
    parts = [
        image(plots.lines_by_panel(curves, panel="phase", series="method", x="sparsity", y="quality",
                                   title="quality vs sparsity, prefill and decode", ylabel="quality",
                                   logx=False, logy=False), "sparsity vs quality"),
    ]
    if summary:
        parts += [image(plots.lines_by_panel(summary, panel="phase", series="method", x="density", y="quality",
                                             title="training-free methods on the LM: quality vs density "
                                                   "(mean over seeds, 95% interval)", ylabel="quality",
                                             logx=True, logy=False, err="quality_ci95"), "density vs quality"),
                  to_html(summary)]
    if speed:
        parts.append(image(plots.lines_by_panel(speed, panel="section", series="method", x="N", y="speed vs SDPA",
                                                title="training-free methods: speed vs dense SDPA (higher is faster)",
                                                ylabel="SDPA time / method time"), "speed vs SDPA"))
    parts += [to_html(rows), errors(rows)]
    return "\n".join(parts), {"sparse": rows}
