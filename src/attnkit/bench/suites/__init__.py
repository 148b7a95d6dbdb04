"""Benchmark suites: each module here is one suite, run as ``attnkit bench NAME``.

Adding a suite is adding one module here; the CLI lists it in ``attnkit bench
--help`` and the report shows its stored rows. A suite module has:

- a docstring: its first line is the suite's one-line help, the rest its ``--help`` text;
- ``NAME`` (optional): the command name when it differs from the module name
  (``"content-sparse"`` for ``content_sparse.py``);
- ``THREADS`` (optional): its default ``--threads`` (default: torch's choice);
- ``add_arguments(parser)``: its own options. Every suite also gets ``--db``,
  ``--resume``, ``--threads``, ``--no-progress`` and ``--device``
  (:func:`attnkit.bench.options.add_common_arguments`); lists are comma-separated;
- ``run(args) -> int``: measure, storing every figure through
  :func:`attnkit.bench.runner.run_items` (rows keyed by small JSON objects), and
  return the exit code;
- ``report(run, rows) -> (html, {table name: rows})`` (optional): its section
  of ``attnkit report``; without it the report shows the rows as one table.

A minimal suite::

    '''``attnkit bench demo``: softmax forward time at a few lengths.'''
    from ..options import ints
    from ..runner import run_items
    from ..timing import attention_call, median_seconds

    def add_arguments(parser):
        parser.add_argument("--n", type=ints, default=[256, 1024], help="comma list of lengths")

    def run(args) -> int:
        def measure(item):
            call = attention_call("softmax", None, True, 1, 8, item["N"], item["N"], 64, device=args.device)
            return {"seconds": median_seconds(call)}

        code, _ = run_items("demo", {"n": args.n}, [{"N": n} for n in args.n], measure, args)
        return code
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..options import Parser, add_common_arguments


def all_suites() -> dict[str, ModuleType]:
    """Every suite module by its command name, sorted by name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found[suite_name(module)] = module
    return dict(sorted(found.items()))


def suite_name(module: ModuleType) -> str:
    return getattr(module, "NAME", module.__name__.rsplit(".", 1)[-1])


def summary(module: ModuleType) -> str:
    """The docstring's first sentence without the leading ``attnkit bench NAME``: its one-line help."""
    first = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    return first.split(":", 1)[1].strip() if first.startswith("``attnkit bench") and ":" in first else first


def configure(parser, module: ModuleType) -> None:
    """Add ``module``'s own options and the common ones to ``parser``."""
    module.add_arguments(parser)
    add_common_arguments(parser, threads=getattr(module, "THREADS", None))
    parser.set_defaults(suite=module)


def build_parser(name: str) -> Parser:
    """A stand-alone parser of suite ``name`` (the CLI builds the same one as a sub-command)."""
    module = all_suites()[name]
    parser = Parser(prog=f"attnkit bench {name}", description=module.__doc__)
    configure(parser, module)
    return parser


def start(args) -> int:
    """Run the suite of parsed ``args``: set its threads, check that its results database can be used
    (before any work), then call its ``run``."""
    import torch

    from ..store import Store

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    Store(args.db).close()
    return int(args.suite.run(args) or 0)


def run(name: str, argv: list[str]) -> int:
    """``attnkit bench NAME ARGV...``: parse and run one suite (used by the overview and by tests)."""
    return start(build_parser(name).parse_args(argv))
