"""The ``attnkit`` command: one argparse parser built from the table of sub-commands in
:mod:`attnkit.commands` (``attnkit --help`` lists them; ``attnkit bench --help`` lists the suites).

Whatever goes wrong is one line on stderr and a non-zero exit code: 2 for a
mistake in the command or its values (unknown names, numbers that do not
parse, sizes that cannot fit in memory, a database that cannot be used), 130
for Ctrl-C, 1 for anything unexpected (``ATTNKIT_DEBUG=1`` shows its traceback).
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from .bench.options import Parser
from .commands import COMMANDS

INTERRUPTED = 130


def build_parser() -> Parser:
    from . import __version__

    parser = Parser(prog="attnkit", description="Attention mechanisms from the literature behind one PyTorch API.")
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    words = [a for a in argv[:2] if not a.startswith("-")][: 2 if argv[:1] in (["bench"], ["train"]) else 1]
    where = " ".join(["attnkit", *words])
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
            return exc.code if isinstance(exc.code, int) else 2
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{where}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, TypeError, LookupError, ImportError, OSError, sqlite3.Error) as exc:
        if os.environ.get("ATTNKIT_DEBUG"):
            raise
        print(f"{where}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 — the command line never shows a traceback
        if os.environ.get("ATTNKIT_DEBUG"):
            raise
        print(f"{where}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(ATTNKIT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError):
        text = f"unknown key {text}"
    return text or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
