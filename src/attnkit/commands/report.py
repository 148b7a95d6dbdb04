"""``attnkit report``: the stored benchmark runs as one HTML page, or two runs compared.

    attnkit report                       # ./attnkit-report/report.html (+ tables as Markdown, CSV, JSON)
    attnkit report --compare 3 7         # run 7 against run 3, row by row, with B/A ratios
    attnkit report --explain "The cat sat on the mat."   # also: what MiniLM attends to in a text
    attnkit report --points mqar-figure.jsonl   # the Zoology figure from another points file

The page shows, for each suite, the newest stored run with rows, and the Zoology figure of
``bench mqar --figure`` from its points file (the checkout's ``docs/mqar-figure.jsonl`` by default). Reading never
creates a database: a missing ``--db`` is an error.
"""
from __future__ import annotations

from pathlib import Path

NAME = "report"
HELP = "write the HTML report of stored benchmark runs (or --compare two runs)"


def add_arguments(parser) -> None:
    from ..bench._mqar_points import default_points_path
    from ..bench.options import positive_int

    parser.add_argument("--db", default=None,
                        help="results database (default: $ATTNKIT_DB or ~/.local/share/attnkit/results.sqlite)")
    parser.add_argument("--out", default="attnkit-report", help="output folder (default: ./attnkit-report)")
    parser.add_argument("--compare", nargs=2, type=positive_int, metavar=("A", "B"), help="compare run B with run A")
    parser.add_argument("--points", type=Path, default=default_points_path(),
                        help="the points file of 'bench mqar --figure' to draw the Zoology figure from; a missing "
                             "file leaves the figure out (default: the checkout's docs/mqar-figure.jsonl, else "
                             "./mqar-figure.jsonl)")
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
        print(f"report: {write_report(store, Path(args.out), explain=args.explain, figure_points=args.points)}")
    finally:
        store.close()
    return 0
