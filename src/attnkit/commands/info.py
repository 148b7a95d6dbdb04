"""``attnkit info [NAME]``: this machine and torch, or one mechanism in detail.

    attnkit info               # torch, threads, fast paths, this machine's fp32 GEMM GFLOP/s
    attnkit info sliding_window
    attnkit info deconstructed # a model piece that is not a mechanism: its equations and readings
"""
from __future__ import annotations

NAME = "info"
HELP = "this machine (no NAME), or one mechanism's papers, forms, parameters and inputs"
# model pieces that are not registered mechanisms: NAME -> the module whose docstring explains them
MODEL_PIECES = {"deconstructed": "attnkit.models.deconstructed", "titans-architectures": "attnkit.models.titans",
                "postnas": "attnkit.training.postnas"}


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", default=None,
                        help=f"a registered mechanism (attnkit list) or a model piece: {', '.join(MODEL_PIECES)}")


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
    """One mechanism explained: :func:`attnkit.describe` (a model piece: its module's docstring)."""
    if name in MODEL_PIECES:
        import importlib

        print(importlib.import_module(MODEL_PIECES[name]).__doc__.strip())
        return 0
    from ..mechanism_info import describe

    print(describe(name))
    return 0
