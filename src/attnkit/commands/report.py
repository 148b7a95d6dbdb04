"""``attnkit report``: the stored benchmark runs as one HTML page, or two runs compared.

    attnkit report                       # ./attnkit-report/report.html (+ tables as Markdown, CSV, JSON)
    attnkit report --compare 3 7         # run 7 against run 3, row by row, with B/A ratios
    attnkit report --explain "The cat sat on the mat."   # also: what MiniLM attends to in a text

The page shows, for each suite, the newest stored run with rows. Reading never
creates a database: a missing ``--db`` is an error.
"""
from __future__ import annotations

from pathlib import Path

NAME = "report"
HELP = "write the HTML report of stored benchmark runs (or --compare two runs)"


def add_arguments(parser) -> None:
    from ..bench.options import positive_int

    parser.add_argument("--db", default=None,
                        help="results database (default: $ATTNKIT_DB or ~/.local/share/attnkit/results.sqlite)")
    parser.add_argument("--out", default="attnkit-report", help="output folder (default: ./attnkit-report)")
    parser.add_argument("--compare", nargs=2, type=positive_int, metavar=("A", "B"), help="compare run B with run A")
    parser.add_argument("--explain", default=None, metavar="TEXT",
                        help="also show what MiniLM attends to in TEXT (rollout, weights; needs attnkit[hf])")


def run(args) -> int:
    from ..bench.report import compare, write_report
    from ..bench.store import Store

    store = Store(args.db, create=False)
    try:
        if args.compare:
            print(compare(store, *args.compare))
            return 0
        print(f"report: {write_report(store, Path(args.out), explain=args.explain)}")
    finally:
        store.close()
    return 0
