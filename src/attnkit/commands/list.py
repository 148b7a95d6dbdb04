"""``attnkit list``: the registered mechanisms (or, with ``--vision``, the vision modules).

    attnkit list                      # a table: name, family, patterns, forms, complexity
    attnkit list --family linear      # one family
    attnkit list --json               # every spec's description as JSON
    attnkit list --markdown           # the README's mechanism table
"""
from __future__ import annotations

import json

NAME = "list"
HELP = "registered mechanisms (--family NAME, --vision, --json, --markdown)"


def add_arguments(parser) -> None:
    parser.add_argument("--family", default=None, help="only this family (e.g. linear, softmax, sparse)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--markdown", action="store_true", help="print the Markdown table used in the README")
    parser.add_argument("--vision", action="store_true", help="list the vision attention modules (attnkit.nn.vision)")


def run(args) -> int:
    if args.vision:
        if args.family or args.markdown:
            raise ValueError("--vision lists modules, not mechanisms: it takes no --family or --markdown")
        return list_vision(args.json)
    from .. import registry
    from ..bench.options import unknown

    if args.family is not None:
        families = {registry.get(n).family for n in registry.names()}
        if args.family not in families:
            raise ValueError(unknown(args.family, families, "family"))
    specs = [registry.get(n) for n in registry.names(args.family)]
    if args.json:
        print(json.dumps([s.describe() for s in specs], indent=2))
    elif args.markdown:
        print(markdown_table(specs))
    else:
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


def list_vision(as_json: bool) -> int:
    from ..nn.vision import modules

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
