"""The ``attnkit`` command: list, info, and (as suites land) bench and report."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnkit", description="Attention mechanisms behind one API.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="registered mechanisms")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_list.add_argument("--markdown", action="store_true", help="print the Markdown table used in the README")
    p_list.add_argument("--family", default=None, help="only this family")
    p_list.add_argument("--vision", action="store_true", help="list the vision attention modules (attnkit.nn.vision)")
    sub.add_parser("info", help="torch, threads, fast paths and this machine's fp32 GEMM GFLOP/s")
    p_bench = sub.add_parser("bench", help="run a benchmark suite", add_help=False)
    p_bench.add_argument("suite", nargs="?", default=None, help=f"one of {bench_suites()}")
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    plugins = {}
    for info in pkgutil.iter_modules(commands_package().__path__):
        module = importlib.import_module(f"attnkit.commands.{info.name}")
        plugins[module.NAME] = module
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and len(argv) > 1 and argv[1].startswith("-"):
        argv.insert(1, "default")  # `attnkit bench --opt ...`: options of the default suite
    args = parser.parse_args(argv)
    if args.command in plugins:
        return int(plugins[args.command].run(args) or 0)
    if args.command == "list" and args.vision:
        return cmd_list_vision(args.json)
    if args.command == "list":
        return cmd_list(args.family, args.json, args.markdown)
    if args.command == "info":
        return cmd_info()
    if args.command == "bench":
        return cmd_bench(args.suite, args.rest)
    return 2


def commands_package():
    return importlib.import_module("attnkit.commands")


def cmd_list(family: str | None, as_json: bool, as_markdown: bool = False) -> int:
    from . import registry

    specs = [registry.get(n) for n in registry.names(family)]
    if as_json:
        print(json.dumps([s.describe() for s in specs], indent=2))
        return 0
    if as_markdown:
        print(markdown_table(specs))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"attnkit: {len(specs)} mechanisms")
    for col in ("name", "family", "patterns", "forms", "complexity"):
        table.add_column(col)
    for s in specs:
        d = s.describe()
        table.add_row(s.name, s.family, ", ".join(d["patterns"]), ", ".join(d["forms"]), s.complexity)
    Console(width=160).print(table)
    return 0


def markdown_table(specs) -> str:
    """The mechanism table of the README (kept true by tests/test_readme.py)."""
    short = {"causal-self": "CS", "noncausal-self": "NS", "causal-cross": "CC", "noncausal-cross": "NC"}
    lines = [
        "| mechanism | family | patterns | forms | paper |",
        "|---|---|---|---|---|",
    ]
    for s in sorted(specs, key=lambda s: (s.family, s.name)):
        d = s.describe()
        patterns = " ".join(short[p] for p in d["patterns"])
        lines.append(f"| `{s.name}` | {s.family} | {patterns} | {', '.join(d['forms'])} | {s.papers[0] if s.papers else ''} |")
    return "\n".join(lines)


def cmd_list_vision(as_json: bool) -> int:
    from .nn.vision import modules

    rows = [m.describe() for m in modules()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"attnkit.nn.vision: {len(rows)} modules (NCHW in, NCHW out)")
    for col in ("name", "paper", "file"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["paper"], r["file"])
    Console(width=160).print(table)
    return 0


def cmd_info() -> int:
    from . import __version__, registry
    from .machine import machine_info

    info = machine_info()
    info["attnkit"] = __version__
    info["mechanisms"] = len(registry.names())
    for key, value in info.items():
        print(f"{key:>18}: {value}")
    return 0


def bench_suites() -> list[str]:
    from . import bench

    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def cmd_bench(suite: str | None, rest: list[str]) -> int:
    suites = bench_suites()
    if suite is None and "default" in suites:
        suite = "default"
    if suite not in suites:
        print(f"attnkit bench: unknown suite {suite!r}; expected one of {suites}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"attnkit.bench.{suite}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
