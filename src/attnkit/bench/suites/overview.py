"""``attnkit bench overview``: a quick cross-section of the main suites (kernels, cab, mqar, sparse), then the HTML report.

Runs, into one results database: the kernel matrix at three lengths, CAB's pattern matrix for every
mechanism with efficiency lengths of a few efficient ones, MQAR for attention
and plain linear attention at one learning rate, and the sparse frontier on a
briefly trained LM; then
writes the report (``attnkit report``). Sized to take at most ~8 minutes on an
idle 2-core machine (about 14 CPU-minutes); it prints the wall and CPU time of
each section. Each suite's own command runs its full sweep.
"""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from pathlib import Path

from ... import mechanisms
from ..options import choices, ints
from ..report import write_report
from ..store import Store
from . import run as run_suite

REPORTED = False  # runs other suites; stores no rows of its own
CAB_EFFICIENT = ("linear", "based", "gated_deltanet", "sliding_window")
STEPS = ("kernels", "cab", "mqar", "sparse")
KERNEL_N = [512, 1024, 2048]  # three lengths, so that the kernel plots are curves


def add_arguments(p) -> None:
    p.add_argument("--out", default="attnkit-report", help="report folder (default: ./attnkit-report)")
    p.add_argument("--kernel-n", type=ints, default=KERNEL_N,
                   help=f"comma list of sequence lengths of the kernel matrix (default {','.join(map(str, KERNEL_N))})")
    p.add_argument("--skip", type=choices(STEPS, "suite"), default=[], help=f"comma list of suites to leave out ({','.join(STEPS)})")


def run(args) -> int:
    common = [*(["--db", args.db] if args.db else []), *(["--resume"] if args.resume else []),
              *(["--threads", str(args.threads)] if args.threads else []),
              *(["--no-progress"] if args.no_progress else []), "--device", args.device]
    registered = set(mechanisms())
    efficient = [m for m in CAB_EFFICIENT if m in registered]
    missing = [m for m in CAB_EFFICIENT if m not in registered]
    if missing:
        print(f"bench: cab efficiency lengths skip unregistered {missing}")
    argv = {
        "kernels": ["--quick", "--n", ",".join(map(str, args.kernel_n))],
        "cab": ["--lengths", "256,1024,2048", "--efficient", ",".join(efficient)],
        "mqar": ["--roles", "attention,linear (elu+1)", "--lrs", "3e-3"],
        "sparse": ["--train-minutes", "2"],
    }
    codes, spent = {}, {}
    for name in STEPS:
        if name in args.skip:
            continue
        print(f"\n=== attnkit bench {name} ===", flush=True)
        with _clock(spent, name):
            codes[name] = run_suite(name, [*argv[name], *common])
        if codes[name] == 130:  # Ctrl-C: keep what finished, stop here
            break
    with _clock(spent, "report"):
        print(f"\nreport: {write_report(Store(args.db), Path(args.out))}")
    _print_times(spent)
    failed = {k: v for k, v in codes.items() if v}
    if failed:
        print(f"bench: suites with a non-zero exit: {failed}", file=sys.stderr)
    return max(failed.values(), default=0)


@contextlib.contextmanager
def _clock(spent: dict, name: str):
    """Wall time and CPU time (user + sys, this process and its finished subprocesses) of a section."""
    def cpu():
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))

    wall, used = time.perf_counter(), cpu()
    try:
        yield
    finally:
        spent[name] = (time.perf_counter() - wall, cpu() - used)


def _print_times(spent: dict) -> None:
    print("\nsection   wall s    CPU s   (CPU counts every core; the machine may be shared)")
    for name, (wall, used) in spent.items():
        print(f"{name:<8} {wall:7.1f}  {used:7.1f}")
    print(f"{'total':<8} {sum(w for w, _ in spent.values()):7.1f}  {sum(c for _, c in spent.values()):7.1f}")
