"""``attnkit bench cab``: CAB's four attention patterns and efficiency lengths.

After "CAB: Comprehensive Attention Benchmarking on Long Sequence Modeling":

1. **Pattern matrix.** Every registered mechanism is *run* under each of the four
   patterns (causal/non-causal x self/cross, cross with ``Nq != Nk``), whatever
   its spec declares. Outcomes: ``ok``; ``refused`` (the API's ValueError);
   ``leaks future`` (a causal pattern whose earlier outputs change when the last
   key and value change); ``non-finite``; or the error raised. A probed outcome
   that disagrees with the spec's declared patterns is flagged.
2. **Efficiency length.** For each efficient mechanism (complexity not
   ``O(N^2)``), forward time and peak memory over a range of N against vanilla
   attention: ``softmax`` through SDPA and the materialised ``softmax``
   reference. The efficiency length is the N from which the mechanism stays
   cheaper (log-interpolated between measured N).
"""
from __future__ import annotations

import math

import torch

from ... import attention, mechanisms, spec
from ...registry import PATTERNS
from ..memory import available_mb
from ..options import ints, names
from ..runner import run_items
from ..store import Store
from ..timing import attention_call, make_inputs, median_seconds, peak_memory_mb

BASELINES = (("softmax", "sdpa"), ("softmax", "reference"))
PATTERN_CSS = {"ok": "ok", "refused": "refused", "leaks future": "bad", "non-finite": "bad"}
QUICK = dict(batch=1, heads=4, head_dim=64, lengths=[256, 1024, 4096], repeats=3, memory=True)
FULL = dict(batch=1, heads=8, head_dim=64, lengths=[512, 1024, 2048, 4096, 8192, 16384], repeats=5, memory=True)


def probe(name: str, device: str = "cpu") -> dict:
    """The outcome of running ``name`` under each of the four patterns."""
    out = {}
    for pattern in PATTERNS:
        causal, cross = pattern.startswith("causal"), pattern.endswith("cross")
        q, k, v, extra = make_inputs(name, 1, 2, 12 if cross else 16, 16, 16, device=device)
        try:
            with torch.no_grad():
                o = attention(q, k, v, name, causal=causal, **extra)
                if not bool(torch.isfinite(o).all()):
                    out[pattern] = "non-finite"
                    continue
                if causal:
                    k2, v2 = k.clone(), v.clone()
                    k2[:, :, -1] += 1.0
                    v2[:, :, -1] -= 1.0
                    o2 = attention(q, k2, v2, name, causal=causal, **extra)
                    if not torch.allclose(o[:, :, :-1], o2[:, :, :-1], atol=1e-5):
                        out[pattern] = "leaks future"
                        continue
            out[pattern] = "ok"
        except ValueError as exc:
            out[pattern] = "refused" if "support" in str(exc) else f"ValueError: {exc}"
        except Exception as exc:  # the probe reports what running it does
            out[pattern] = f"{type(exc).__name__}: {exc}"
    declared = spec(name).patterns
    out["disagrees_with_spec"] = [p for p in PATTERNS if (out[p] == "ok") != (p in declared)]
    return out


def efficient(name: str) -> bool:
    return spec(name).complexity.replace(" ", "") not in ("O(N^2)", "O(N²)")


def materialised_mb(c: dict, n: int) -> float:
    """What the materialised reference holds at once: scores and weights, fp32."""
    return 2 * c["batch"] * c["heads"] * n * n * 4 / 2**20


def plan(config: dict, names: list[str]) -> tuple[list[dict], list[str]]:
    """Items to measure and the reasons for those dropped up front (too big for memory, no causal-self)."""
    items, skipped = [{"probe": n} for n in names], []
    limit = 0.5 * available_mb()
    timed = config["efficient"] if config.get("efficient") is not None else names
    runners = [(n, None) for n in timed if efficient(n)] + list(BASELINES)
    for name, form in runners:
        causal = "causal-self" in spec(name).patterns
        if not causal and "noncausal-self" not in spec(name).patterns:
            skipped.append(f"{name}: supports no self-attention pattern")
            continue
        for n in config["lengths"]:
            if form == "reference" and materialised_mb(config, n) > limit:
                skipped.append(f"{name}[{form}] N={n}: needs ~{materialised_mb(config, n):.0f} MiB, "
                               f"half of available memory is {limit:.0f} MiB")
                continue
            items.append({"mechanism": name, "form": form, "causal": causal, "N": n})
    return items, skipped


def measure_item(item: dict, c: dict, device: str = "cpu") -> dict:
    if "probe" in item:
        return probe(item["probe"], device)
    args = (item["mechanism"], item["form"], item["causal"], c["batch"], c["heads"], item["N"], item["N"],
            c["head_dim"])
    seconds = median_seconds(attention_call(*args, device=device), repeats=c["repeats"])
    figures = {"seconds": seconds, "tokens_per_s": c["batch"] * item["N"] / seconds}
    s = spec(item["mechanism"])
    if not efficient(item["mechanism"]):
        flops = s.flops(c["batch"], c["heads"], item["N"], item["N"], c["head_dim"], item["causal"])
        figures["gflops"] = flops / seconds / 1e9
    if c["memory"] and device == "cpu":
        figures["peak_mb"] = peak_memory_mb(*args)
    return figures


def efficiency_length(mech: dict[int, float], base: dict[int, float]) -> str:
    """The N from which ``mech`` (N -> cost) stays below ``base``; ``<= N0`` / ``> Nmax`` at the ends."""
    ns = sorted(set(mech) & set(base))
    if not ns:
        return "n/a"
    cheaper = [mech[n] < base[n] for n in ns]
    if all(cheaper):
        return f"<= {ns[0]}"
    if not cheaper[-1]:
        return f"> {ns[-1]}"
    first = max(i for i, c in enumerate(cheaper) if not c) + 1
    lo, hi = ns[first - 1], ns[first]
    r_lo, r_hi = math.log(mech[lo] / base[lo]), math.log(mech[hi] / base[hi])
    t = r_lo / (r_lo - r_hi) if r_lo != r_hi else 0.5
    return str(round(2 ** (math.log2(lo) + t * (math.log2(hi) - math.log2(lo)))))


def efficiency_table(rows: list[dict]) -> list[dict]:
    """Per efficient mechanism: efficiency length in time and memory against each baseline."""
    series: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if "N" in r and "seconds" in r:
            series.setdefault((r["mechanism"], r["form"]), {})[r["N"]] = r
    out = []
    for (name, form), by_n in sorted(series.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        if (name, form) in BASELINES:
            continue
        entry = {"mechanism": name}
        for bname, bform in BASELINES:
            base = series.get((bname, bform), {})
            for fig, label in (("seconds", "time"), ("peak_mb", "memory")):
                entry[f"{label} vs {bform}"] = efficiency_length(
                    {n: max(r[fig], 1e-9) for n, r in by_n.items() if fig in r},
                    {n: max(r[fig], 1e-9) for n, r in base.items() if fig in r})
        out.append(entry)
    return out


def print_summary(rows: list[dict], skipped: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    matrix = Table(title="CAB pattern matrix (probed by running each mechanism)")
    for col in ("mechanism", *PATTERNS, "disagrees with spec"):
        matrix.add_column(col)
    for r in rows:
        if "probe" in r:
            matrix.add_row(r["probe"], *[r[p][:30] for p in PATTERNS], ", ".join(r["disagrees_with_spec"]) or "-")
    console.print(matrix)
    table = efficiency_table(rows)
    eff = Table(title="Efficiency length (N from which the mechanism is cheaper than vanilla attention)")
    for col in ("mechanism", *list(table[0] if table else ["-"])[1:]):
        eff.add_column(col)
    for e in table:
        eff.add_row(*[str(v) for v in e.values()])
    console.print(eff if table else "no efficient mechanism measured (none registered, or all failed): no efficiency lengths")
    for reason in skipped:
        console.print(f"  skipped: {reason}")
    for r in rows:
        if "error" in r:
            console.print(f"  error: {r.get('mechanism', r.get('probe'))} N={r.get('N')}: {r['error']}")


def add_arguments(p) -> None:
    p.add_argument("--full", action="store_true", help="N up to 16384 (default: the quick grid)")
    p.add_argument("--mechanisms", type=names, default=None, help="comma list of mechanisms (default: all registered)")
    p.add_argument("--efficient", type=names, default=None,
                   help="comma list of mechanisms to time for efficiency lengths (default: every efficient one)")
    p.add_argument("--lengths", type=ints, default=None, help="comma list of N (default: the grid of --full or quick)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")


def run(args) -> int:
    config = dict(FULL if args.full else QUICK)
    names_ = args.mechanisms or mechanisms()
    for n in names_ + (args.efficient or []):
        spec(n)  # unknown names: ValueError naming the closest registered names, before any work
    if args.lengths:
        config["lengths"] = sorted(args.lengths)
    config["memory"] = not args.no_memory
    config["mechanisms"], config["efficient"] = names_, args.efficient
    items, skipped = plan(config, names_)
    for reason in skipped:
        print(f"cab: skipping {reason}")
    code, run_id = run_items("cab", config, items, lambda it: measure_item(it, config, args.device), args,
                             describe=lambda it: it.get("probe") or f"{it['mechanism']} N={it['N']}")
    print_summary(Store(args.db).rows(run_id), skipped)
    return code


def report(run: dict, rows: list[dict]) -> tuple[str, dict]:
    from ..report import plots
    from ..report.parts import errors, gemm, gemm_note, image, to_html

    rate = gemm(run)
    matrix = [{"mechanism": r["probe"], **{p: r[p] for p in PATTERNS},
               "disagrees with spec": ", ".join(r["disagrees_with_spec"]) or "-"} for r in rows if "probe" in r]
    timed = [r for r in rows if "seconds" in r]
    lines = [{"mechanism": r["mechanism"] + (f"[{r['form']}]" if r.get("form") else ""),
              "pattern": "causal-self" if r["causal"] else "noncausal-self", "N": r["N"], "seconds": r["seconds"],
              "peak_mb": r.get("peak_mb"),
              "fraction_of_gemm": r["gflops"] / rate if rate and "gflops" in r else None} for r in timed]
    eff = efficiency_table(rows)
    figures = plots.speed_memory_gemm(lines, what="CAB forward", gemm_note=gemm_note([], run) + " (the quadratic "
                                      "mechanisms: the others have no FLOP count)")
    parts = [
        "<h3>Pattern matrix (each mechanism run under each pattern)</h3>", to_html(matrix, PATTERN_CSS),
        "<h3>Efficiency length against vanilla attention</h3>", to_html(eff),
        *(image(uri, alt) for uri, alt in figures), errors(rows),
    ]
    timings = [{"mechanism": r["mechanism"], "form": r.get("form"), "pattern": line["pattern"], "N": r["N"],
                **{k: r.get(k) for k in ("seconds", "tokens_per_s", "gflops")},
                "fraction_of_gemm": line["fraction_of_gemm"], "peak_mb": r.get("peak_mb")}
               for r, line in zip(timed, lines)]
    return "\n".join(parts), {"cab_patterns": matrix, "cab_efficiency_length": eff, "cab_timings": timings}
