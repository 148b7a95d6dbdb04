"""``attnkit info [NAME]``: this machine and torch, or one mechanism in detail.

    attnkit info               # torch, threads, fast paths, this machine's fp32 GEMM GFLOP/s
    attnkit info sliding_window
"""
from __future__ import annotations

NAME = "info"
HELP = "this machine (no NAME), or one mechanism's papers, forms, parameters and inputs"


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", default=None, help="a registered mechanism (attnkit list)")


def run(args) -> int:
    if args.name is not None:
        return mechanism_info(args.name)
    from .. import __version__, registry
    from ..bench.machine import machine_info

    info = machine_info()
    info["attnkit"] = __version__
    info["mechanisms"] = len(registry.names())
    for key, value in info.items():
        print(f"{key:>18}: {value}")
    return 0


def mechanism_info(name: str) -> int:
    """One mechanism explained: :func:`attnkit.describe`."""
    from ..mechanism_info import describe

    print(describe(name))
    return 0
