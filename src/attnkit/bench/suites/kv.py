"""``attnkit bench kv``: compressing KV caches (attnkit.cache) against the full cache.

For each policy and budget (a fraction of the context), on the trained
Shakespeare LM (``--checkpoint``, made by ``attnkit train lm``) and on a tiny
random Llama built from a config (transformers, GQA, RoPE):

- quality at the LM's trained context: held-out windows of ``--ppl-context``
  tokens, the first half prefilled and compressed, the second half decoded one
  token at a time through the compressed cache; perplexity of the decoded
  tokens and the share whose argmax matches the full cache's (the tiny Llama
  has random weights: only the agreement means something there);
- at ``--context`` tokens (16k by default): the cache's bytes after prefill and
  its peak allocated bytes while decoding ``--decode`` tokens, against the full
  cache's keys and values; the peak while prefilling: with ``--chunk`` (default
  256) the prompt is prefilled again in chunks through
  :func:`attnkit.cache.chunked.prefill`, compressing as they arrive, for every
  policy that can (``prefill_mode`` "chunked exact" / "chunked approximate");
  the others need the whole prompt ("whole prompt": the compressed layers plus
  the full and compressed copies of the layer being compressed); decode tokens/s against the full cache measured
  right after it in the same process (in turns; the machine may be shared);
  the time the policy takes to compress the prefilled prompt (the prefill
  itself is the same full-attention pass for every policy and is reported once).

The prompt is prefilled once per model (every policy compresses after the
prompt attended to itself in full, so each policy is applied to the recorded
prefill), apart from the chunked prefill runs. RazorAttention's retrieval
heads are found on each model first (echo and induction scores on a random
block of 64 tokens repeated).

Passkey retrieval (:mod:`attnkit.bench.kv_passkey`), on the Shakespeare LM
only (the tiny Llama has random weights): ``--passkey-trials`` prompts of
``--ppl-context`` tokens (the LM's training context, the longest it handles),
prefilled and compressed by the policy, the key decoded through the cache.
The LM answers only if it was trained with passkey episodes mixed in
(``attnkit train lm --passkey SHARE``); the full cache's row says whether it was.
"""
from __future__ import annotations

import html
import math
import time
from contextlib import closing

import torch
import torch.nn.functional as F

from ... import cache as kv
from ...cache.chunked import prefill
from .. import kv_passkey
from ..kv_runs import AttnkitLM, TinyLlama, compress
from ..kv_targets import checks, print_targets
from ..options import choices, floats, names, non_negative_int, positive_int
from ..runner import run_items
from ..store import canonical

THREADS = 1  # decode steps are small: one thread is fastest on a shared machine
POLICIES = ("streaming", "h2o", "tova", "snapkv", "knorm", "pyramidkv", "expected", "adakv", "razor", "snapkv-kivi4",
            "kivi8", "kivi4", "kivi2")
PARTS = ("quality", "memory", "speed")


def make_policy(name: str, budget: float, model, slack: int = 0):
    """The policy ``name`` at ``budget`` (a fraction of the prompt); KIVI ignores the budget."""
    if name.startswith("kivi"):  # KIVI's groups of 32 channels, or one group per head when heads are narrower
        return kv.KIVI(int(name[4:]), group=min(32, model.head_dim))
    scorer = {"streaming": lambda: kv.StreamingLLM(budget, slack=slack), "h2o": lambda: kv.H2O(budget, slack=slack),
              "tova": lambda: kv.TOVA(budget, slack=slack), "snapkv": lambda: kv.SnapKV(budget, window=8),
              "knorm": lambda: kv.KeyNorm(budget, slack=slack),
              "pyramidkv": lambda: kv.PyramidKV(kv.SnapKV(budget, window=8), layers=model.layers),
              "expected": lambda: kv.ExpectedAttention(budget, rotate=model.rotate),
              "adakv": lambda: kv.AdaKV(kv.SnapKV(budget, window=8)),
              "razor": lambda: kv.RazorAttention(budget, retrieval=model.retrieval()),
              "snapkv-kivi4": lambda: kv.KIVI(4, group=min(32, model.head_dim), under=kv.SnapKV(budget, window=8))}
    if name not in scorer:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return scorer[name]()


def held_out_windows(codec, context: int, count: int, vocab: int) -> torch.Tensor:
    from ...data import shakespeare
    from ...training.metrics import eval_windows

    _, held = shakespeare.load_split()
    return eval_windows(codec.encode(held) % vocab, context - 1, count * (context - 1))[:count]


@torch.no_grad()
def decode_quality(model, windows, policy) -> tuple[float, torch.Tensor]:
    """Perplexity of the second half of each window decoded through the compressed cache, and the argmaxes."""
    half = windows.shape[1] // 2
    last, recorder = model.prefill(windows[:, :half])
    cache = model.start(policy, compress(recorder, policy))
    nll, argmax = 0.0, []
    for t in range(half, windows.shape[1]):
        nll += F.cross_entropy(last.float(), windows[:, t], reduction="sum").item()
        argmax.append(last.argmax(-1))
        if t + 1 < windows.shape[1]:
            last, cache = model.step(windows[:, t : t + 1], cache)
    _close(cache)
    return math.exp(nll / windows[:, half:].numel()), torch.stack(argmax, 1)


@torch.no_grad()
def decode_memory(model, recorded, policy, tokens: int) -> dict:
    """The compressed cache's bytes after prefill, its peak while decoding ``tokens`` tokens (a copying eviction's
    old buffer counted with the new one: see the models' ``step_peak``), and the peak a
    whole-prompt prefill reaches (the layers before the one being compressed, that layer's full and compressed
    copies)."""
    stores = compress(recorded, policy)
    cache = model.start(policy, stores)
    after = sum(s.allocated_bytes() for s in stores)
    prompt = [store for store, _, _ in (recorded.layers[i] for i in sorted(recorded.layers))]
    kept = [s.allocated_bytes() for s in stores]
    prefill_peak = max(sum(kept[:i]) + prompt[i].allocated_bytes() + (kept[i] if stores[i] is not prompt[i] else 0)
                       for i in range(len(kept)))
    token, peak = torch.zeros(1, 1, dtype=torch.long), after
    for _ in range(tokens):
        before = model.stores(cache)
        _, cache = model.step(token, cache)
        peak = max(peak, model.step_peak(before, cache))
    _close(cache)
    return {"bytes_after_prefill": after, "peak_bytes": peak, "prefill_peak_bytes": prefill_peak}


@torch.no_grad()
def decode_speed(model, recorded, policy, tokens: int) -> dict:
    """Decode tokens/s through the compressed cache (after two warm-up tokens) and the time compressing took."""
    t0 = time.perf_counter()
    stores = compress(recorded, policy)
    seconds_compress = time.perf_counter() - t0
    cache = model.start(policy, stores)
    token = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(2):  # warm-up (a full cache grows its buffer once here)
        _, cache = model.step(token, cache)
    t0 = time.perf_counter()
    for _ in range(tokens):
        _, cache = model.step(token, cache)
    seconds = time.perf_counter() - t0
    _close(cache)
    return {"tokens_per_s": tokens / seconds, "compress_seconds": seconds_compress}


def chunked_prefill(model, ids, policy, chunk: int):
    """The chunked prefill's peak bytes and time, or ``None`` when the policy needs the whole prompt."""
    mode = getattr(policy, "chunked", None)
    if not chunk or policy is None or mode is None:
        return None
    t0 = time.perf_counter()
    done = prefill(model.model, ids, policy, chunk=chunk)
    seconds = time.perf_counter() - t0
    _close(done.cache)
    return {"prefill_peak_bytes": done.peak_bytes, "seconds": seconds, "mode": mode}


def _close(cache):
    if hasattr(cache, "close"):
        cache.close()


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None, help="Shakespeare LM checkpoint (attnkit train lm --out); "
                        "without it only the tiny Llama runs")
    parser.add_argument("--passkey-checkpoint", default=None,
                        help="LM the passkey rows are measured on, at its trained context (default: --checkpoint "
                             "at --ppl-context); e.g. one made by attnkit train lm --passkey 0.5")
    parser.add_argument("--policies", type=names, default=list(POLICIES), help="comma list")
    parser.add_argument("--budgets", type=floats, default=[0.75, 0.5, 0.25, 0.1], help="comma list of fractions")
    parser.add_argument("--measure", type=choices(PARTS, "part"), default=list(PARTS),
                        help="comma list of what to measure: quality (perplexity, agreement, passkey), memory "
                             "(cache bytes while decoding and prefilling), speed (decode tokens/s, compression "
                             "and chunked-prefill time); quality and memory do not depend on the machine's load, "
                             "so they can run apart from speed into the same --db (the report joins the newest "
                             "run of each part)")
    parser.add_argument("--context", type=positive_int, default=16384, help="context of the memory/speed runs")
    parser.add_argument("--decode", type=positive_int, default=32, help="tokens decoded in the memory/speed runs")
    parser.add_argument("--ppl-context", type=positive_int, default=256, help="window of the quality runs")
    parser.add_argument("--windows", type=positive_int, default=32, help="held-out windows of the quality runs")
    parser.add_argument("--passkey-trials", type=non_negative_int, default=32,
                        help="passkey prompts per row (0: not measured)")
    parser.add_argument("--chunk", type=non_negative_int, default=256,
                        help="tokens per prefill chunk in the chunked-prefill runs (0: not run)")
    parser.add_argument("--slack", type=float, default=1 / 16,
                        help="decode-time evictions run once the cache holds budget x (1 + slack) tokens "
                             "(0: after every token, as the papers)")


def _load_lm(path):
    from ...training.lm import load_checkpoint

    lm, codec, ckpt = load_checkpoint(path)
    return AttnkitLM(lm), codec, ckpt.get("train_config", {}).get("context")


def run(args) -> int:
    for b in args.budgets:
        kv.policy.check_budget(b)
    parts = set(args.measure)
    models = [TinyLlama()]
    codec = None
    if args.checkpoint:
        lm, codec, _ = _load_lm(args.checkpoint)
        models.insert(0, lm)
    else:
        print("no --checkpoint: the Shakespeare LM is skipped (make one with attnkit train lm --out PATH)")
    passkey_lm = None
    if "quality" in parts and args.passkey_trials and (args.passkey_checkpoint or args.checkpoint):
        if args.passkey_checkpoint:
            passkey_lm = _load_lm(args.passkey_checkpoint)
            passkey_lm = (*passkey_lm[:2], passkey_lm[2] or args.ppl_context)
        else:
            passkey_lm = (models[0], codec, args.ppl_context)
    for m in models + ([passkey_lm[0]] if passkey_lm else []):
        for p in args.policies:
            make_policy(p, 0.5, m)  # unknown names fail before any work
    items = []
    for m in models:
        items.append({"model": m.name, "policy": "full"})
        for p in args.policies:
            for b in ([None] if p.startswith("kivi") else args.budgets):
                items.append({"model": m.name, "policy": p, "budget": b})
    by_name, prepared = {m.name: m for m in models}, {}
    if codec is None:
        from ...data.codecs import make_codec
        from ...data import shakespeare

        codec = make_codec("byte", shakespeare.load_split()[0][:1000])

    def prepare(model):
        if model.name not in prepared:
            base = {}
            if "quality" in parts:
                vocab = model.model.config.vocab_size
                base["windows"] = held_out_windows(codec, args.ppl_context, args.windows, vocab)
                base["ppl"], base["argmax"] = decode_quality(model, base["windows"], None)
                print(f"{model.name}: full-cache perplexity {base['ppl']:.3f}")
            if parts & {"memory", "speed"}:
                t0 = time.perf_counter()
                base["ids"] = torch.randint(0, model.model.config.vocab_size, (1, args.context),
                                            generator=torch.Generator().manual_seed(0))
                _, base["recorded"] = model.prefill(base["ids"])
                base["prefill"] = time.perf_counter() - t0
                print(f"{model.name}: prefill of {args.context} tokens {base['prefill']:.1f} s "
                      f"(full attention, every policy)")
            prepared[model.name] = base
        return prepared[model.name]

    def measure(item):
        model = by_name[item["model"]]
        base = prepare(model)

        def policy(context, on=model):
            if item["policy"] == "full":
                return None
            slack = int(args.slack * round(item["budget"] * context)) if item["budget"] else 0
            return make_policy(item["policy"], item["budget"], on, slack)

        row = {}
        if "quality" in parts:
            ppl, argmax = decode_quality(model, base["windows"], policy(args.ppl_context // 2))
            row.update(perplexity=round(ppl, 4), perplexity_vs_full=round(ppl / base["ppl"], 4),
                       argmax_agreement=round(float((argmax == base["argmax"]).float().mean()), 4))
            if passkey_lm and isinstance(model, AttnkitLM):
                lm, lm_codec, context = passkey_lm
                from ...data import shakespeare

                held = lm_codec.encode(shakespeare.load_split()[1])
                row["passkey_accuracy"] = kv_passkey.accuracy(lm, lm_codec, held, context, args.passkey_trials,
                                                              policy(context, lm), compress)
                row["passkey_context"] = context
        if parts & {"memory", "speed"}:
            row["context"] = args.context
            full_bytes = sum(2 * s.k.numel() * s.k.element_size() for s, _, _ in base["recorded"].layers.values())
        if "memory" in parts:
            memory = decode_memory(model, base["recorded"], policy(args.context), args.decode)
            chunked = chunked_prefill(model, base["ids"], policy(args.context), args.chunk)
            row.update(bytes_after_prefill=memory["bytes_after_prefill"], peak_bytes=memory["peak_bytes"],
                       full_bytes=full_bytes, peak_vs_full=round(memory["peak_bytes"] / full_bytes, 4),
                       prefill_peak_vs_full=round((chunked or memory)["prefill_peak_bytes"] / full_bytes, 4),
                       prefill_mode=f"chunked {chunked['mode']}" if chunked else "whole prompt")
        if "speed" in parts:
            before = decode_speed(model, base["recorded"], None, args.decode)  # the full cache, in turns
            speed = decode_speed(model, base["recorded"], policy(args.context), args.decode)
            after = decode_speed(model, base["recorded"], None, args.decode)
            full = (before["tokens_per_s"] + after["tokens_per_s"]) / 2
            row.update(decode_tokens_per_s=round(speed["tokens_per_s"], 1),
                       decode_vs_full=round(speed["tokens_per_s"] / full, 3),
                       compress_seconds=round(speed["compress_seconds"], 3), prefill_seconds=round(base["prefill"], 2))
            if "memory" not in parts:
                chunked = chunked_prefill(model, base["ids"], policy(args.context), args.chunk)
            row["chunked_prefill_seconds"] = round(chunked["seconds"], 2) if chunked else None
        print(describe_row(item, row))
        return row

    config = {k: getattr(args, k) for k in ("checkpoint", "passkey_checkpoint", "policies", "budgets", "measure",
                                            "context", "decode", "ppl_context", "windows", "slack", "chunk",
                                            "passkey_trials")}
    code, run_id = run_items("kv", config, items, measure, args)
    from ..store import Store

    with closing(Store(args.db)) as store:
        print_targets(store.rows(run_id))
    return code


def describe_row(item: dict, row: dict) -> str:
    """One printed line per row: what was measured."""
    text = f"{item['model']:<15}{item['policy']:<13}{str(item.get('budget') or ''):>5}"
    if "perplexity" in row:
        text += f"  ppl {row['perplexity']:8.3f} ({row['perplexity_vs_full']:.3f}x)  agree {row['argmax_agreement']:.3f}"
    if "passkey_accuracy" in row:
        text += f"  passkey {row['passkey_accuracy']:.2f}"
    if "peak_vs_full" in row:
        text += f"  memory {row['peak_vs_full']:.3f}x full (prefill {row['prefill_peak_vs_full']:.3f}x, {row['prefill_mode']})"
    if "decode_vs_full" in row:
        text += (f"  decode {row['decode_tokens_per_s']:.1f} tok/s ({row['decode_vs_full']:.2f}x full)  "
                 f"compress {row['compress_seconds']:.2f} s")
    return text


COLUMNS = {"quality": ("perplexity", "perplexity_vs_full", "argmax_agreement", "passkey_accuracy", "passkey_context"),
           "memory": ("context", "bytes_after_prefill", "peak_bytes", "full_bytes", "peak_vs_full",
                      "prefill_peak_vs_full", "prefill_mode"),
           "speed": ("context", "decode_tokens_per_s", "decode_vs_full", "compress_seconds", "prefill_seconds",
                     "chunked_prefill_seconds")}


def latest(store) -> tuple[dict, list[dict]] | None:
    """The report's kv rows: per (model, policy, budget), each part's columns from the newest run that measured
    that part (runs of ``--measure quality,memory`` and ``--measure speed`` join into one table), at the newest
    run's context. The returned run is the newest; its ``joined`` field lists the runs the rows come from."""
    newest = store.latest_run("kv")
    if newest is None:
        return None
    context = newest["config"].get("context")
    ids = [i for (i,) in store.db.execute("SELECT id FROM runs WHERE suite = 'kv' ORDER BY id DESC")]
    table, filled, used, errors = {}, set(), [], {}
    for run_id in ids:
        run = store.run(run_id)
        if run["config"].get("context") != context:
            continue
        parts = run["config"].get("measure", list(PARTS))
        for key, figures in store.keyed_rows(run_id):
            name = canonical(key)
            row = table.setdefault(name, dict(key))
            if "error" in figures:
                errors.setdefault(name, figures["error"])
                continue
            for part in parts:
                if (name, part) not in filled:
                    row.update({c: figures[c] for c in COLUMNS[part] if c in figures})
                    filled.add((name, part))
                    if run_id not in [u["run"] for u in used]:
                        used.append({"run": run_id, "measure": ",".join(parts),
                                     "gemm_gflops_fp32": run["machine"].get("gemm_gflops_fp32")})
    for name, error in errors.items():
        if not any((name, part) in filled for part in PARTS):
            table[name]["error"] = error
    return {**newest, "joined": used}, list(table.values())


def report(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from ..report import plots
    from ..report.parts import errors, image, to_html

    measured = [r for r in rows if "error" not in r and r.get("budget") is not None]
    figures = [
        plots.lines_by_panel(measured, panel="model", series="policy", x="budget", y=y, title=title, ylabel=label,
                             logx=False, logy=False)
        for y, title, label in (
            ("peak_vs_full", f"cache memory while decoding vs budget, {run['config'].get('context')} tokens",
             "peak memory (x full cache)"),
            ("prefill_peak_vs_full", "cache memory while prefilling vs budget", "prefill peak (x full cache)"),
            ("decode_vs_full", "decode tokens/s vs budget", "decode tokens/s (x full cache)"),
            ("perplexity_vs_full", "held-out perplexity vs budget", "perplexity (x full cache)"),
            ("passkey_accuracy", "passkey retrieval vs budget", "passkey accuracy"))]
    joined = run.get("joined", [])
    sources = "; ".join(f"run {j['run']}: {j['measure']} (fp32 GEMM {j['gemm_gflops_fp32']} GFLOP/s)" for j in joined)
    targets = checks(rows)
    parts = ([f"<p>rows joined from {html.escape(sources)}</p>"] if len(joined) > 1 else []) + [
        image(f, "kv cache policies vs budget") for f in figures if f is not None]
    parts += [to_html(rows), errors(rows)]
    tables = {"kv": rows}
    if targets:
        parts.insert(0, "<h3>targets</h3>" + to_html(targets))
        tables["kv_targets"] = targets
    return "\n".join(parts), tables
