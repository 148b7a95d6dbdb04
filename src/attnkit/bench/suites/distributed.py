"""``attnkit bench distributed``: context-parallel attention on 2-4 local processes (gloo).

Causal fp32 forward + backward, B=1, H=8, D=64, one thread per rank, processes
forked on this machine and joined by a gloo group on 127.0.0.1. For every
sequence length N, world size P and strategy (ring and BurstAttention with the
zigzag layout, Ulysses, LASP-2 on linear attention, all-gather (the softmax
layers of LASP-2H), Star Attention with a 64-token query after the N context
tokens), per rank (maximum over ranks):

1. bytes sent, counted in the wrappers around the collectives, against the
   strategy's analytic count (ratio; target within 5%);
2. peak memory (anonymous RSS growth during one call) against the single-process
   call (softmax, linear attention for LASP-2, causal softmax over context + query
   for Star) measured in the same run: ``P x peak / single peak`` (target <= 1.3
   at the largest N);
3. wall time, and for ring and BurstAttention the time without overlap (each
   block received before computing) over the time with it;
4. for ring and Ulysses, the memory floor measured in the same run: a rank
   allocating only the shard-sized tensors the strategy cannot do without
   (``context_parallel.FLOOR_UNITS``): ``P x floor / single peak`` says how close
   to the target the algorithm can get, ``peak / floor`` how close the code is.

Processes share the machine's cores: with 2 cores and 4 ranks, times say what
the algorithm costs, not what P machines would give.
"""
from __future__ import annotations

from .. import context_parallel as measure
from ..options import choices, ints, positive_int
from ..runner import run_items

STRATEGIES = ("ring", "burst", "ulysses", "lasp2", "allgather", "star")
BASELINE = {"ring": "single", "burst": "single", "ulysses": "single", "lasp2": "single_linear",
            "allgather": "single", "star": "single_star"}
OVERLAPPED = ("ring", "burst")
FLOORS = {"ring": "ring_floor", "ulysses": "ulysses_floor"}
THREADS = 1


def add_arguments(parser) -> None:
    parser.add_argument("--nproc", type=ints, default=[2, 4], help="comma list of world sizes (default 2,4)")
    parser.add_argument("--n", type=ints, default=[2048, 4096], help="comma list of sequence lengths")
    parser.add_argument("--strategies", type=choices(STRATEGIES, "strategy"), default=list(STRATEGIES))
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--quick", action="store_true", help="N=1024,2048 and 2 repeats")


def _items(args):
    ns = [1024, 2048] if args.quick else args.n
    for n in ns:
        for base in sorted({BASELINE[s] for s in args.strategies}):
            yield {"N": n, "P": 1, "strategy": base}
        for p in args.nproc:
            for s in args.strategies:
                yield {"N": n, "P": p, "strategy": s}
                if s in OVERLAPPED:
                    yield {"N": n, "P": p, "strategy": s, "overlap": False}
                if s in FLOORS:
                    yield {"N": n, "P": p, "strategy": FLOORS[s]}


def run(args) -> int:
    repeats = 2 if args.quick else args.repeats
    print(f"attnkit bench distributed: B={measure.B} H={measure.H} D={measure.D} fp32 causal fwd+bwd, "
          f"1 thread per rank, {measure.environment()}")
    baseline: dict = {}
    overlapped: dict = {}
    measured: dict = {}

    def one(item):
        job = {"strategy": item["strategy"], "N": item["N"], "overlap": item.get("overlap", True)}
        ((_, figures),) = measure.run_processes(item["P"], [job], repeats)
        key = (item["N"], item["strategy"])
        if item["P"] == 1:
            baseline[key] = figures
            return figures
        if item["strategy"] in FLOORS.values():
            return _floor(item, figures, baseline.get((item["N"], "single")), measured)
        if item.get("overlap", True):
            measured[(item["N"], item["P"], item["strategy"])] = figures["peak_mb"]
        analytic = measure.analytic_bytes(item["strategy"], item["N"], item["P"])
        figures["bytes_analytic"] = analytic
        figures["bytes_ratio"] = figures["bytes"] / analytic
        base = baseline.get((item["N"], BASELINE[item["strategy"]]))
        if base and base["peak_mb"] > 0:
            figures["memory_vs_single_times_p"] = item["P"] * figures["peak_mb"] / base["peak_mb"]
        if item["strategy"] in OVERLAPPED:
            key = (item["N"], item["P"], item["strategy"])
            if item.get("overlap", True):
                overlapped[key] = figures["seconds"]
            elif key in overlapped:
                figures["no_overlap_over_overlap"] = figures["seconds"] / overlapped[key]
        print(_line(item, figures))
        return figures

    code, _ = run_items("distributed", {"n": args.n, "nproc": args.nproc, "strategies": args.strategies,
                                        "quick": args.quick}, list(_items(args)), one, args)
    return code


def _floor(item, figures, base, measured) -> dict:
    strategy = next(s for s, f in FLOORS.items() if f == item["strategy"])
    parts = [f"N={item['N']} P={item['P']} {strategy} memory floor: peak {figures['peak_mb']:.1f} MB"]
    if base and base["peak_mb"] > 0:
        figures["floor_vs_single_times_p"] = item["P"] * figures["peak_mb"] / base["peak_mb"]
        parts.append(f"P x floor / single = {figures['floor_vs_single_times_p']:.2f}")
    peak = measured.get((item["N"], item["P"], strategy))
    if peak is not None and figures["peak_mb"] > 0:
        figures["peak_over_floor"] = peak / figures["peak_mb"]
        parts.append(f"{strategy} peak / floor = {figures['peak_over_floor']:.2f}")
    print(" ".join(parts))
    return figures


def _line(item, f) -> str:
    parts = [f"N={item['N']} P={item['P']} {item['strategy']}{'' if item.get('overlap', True) else ' no-overlap'}:",
             f"{f['seconds'] * 1e3:.0f} ms", f"peak {f['peak_mb']:.1f} MB",
             f"bytes {f['bytes']:,} / analytic {f['bytes_analytic']:,} = {f['bytes_ratio']:.4f}"]
    if "memory_vs_single_times_p" in f:
        parts.append(f"P x peak / single = {f['memory_vs_single_times_p']:.2f}")
    if "no_overlap_over_overlap" in f:
        parts.append(f"no-overlap / overlap time = {f['no_overlap_over_overlap']:.2f}")
    return " ".join(parts)
