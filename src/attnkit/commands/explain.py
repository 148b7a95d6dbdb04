"""``attnkit explain``: what a model attends to in a text, as a static HTML page of pictures.

    attnkit explain "The cat sat on the mat." --model minilm --method rollout --out view.html
    attnkit explain "The cat sat on the mat." --method weights --head 3
    attnkit explain "The cat sat on the mat." --method weights --mechanism sliding_window
    attnkit explain "A man plays the guitar." --pair "Someone is playing music." --method relevancy

Methods: ``weights`` (every layer's and head's attention matrix, and the token-to-token
line view), ``rollout`` and ``flow`` (attention rollout and attention flow over the input
tokens). With ``--pair OTHER``: the two texts' embedding similarity explained token by token
(``contribution``, ``rollout``, ``flow``, ``relevancy`` or ``lrp``, AttnLRP). ``--mechanism`` runs the model's
attention as another registered mechanism (without retraining) and draws its weights.
The page needs no server: the pictures are PNGs embedded in it.
"""
from __future__ import annotations

from pathlib import Path

NAME = "explain"
HELP = "draw what a model attends to in a text (weights, rollout, flow; a pair's relevancy, lrp) as a static HTML page"


def add_arguments(parser) -> None:
    from ..bench.options import non_negative_int
    from ..bench.report.explain import METHODS, MODELS, PAIR_METHODS

    parser.add_argument("text", help="the text to explain (quote it)")
    parser.add_argument("--model", default="minilm", help=f"the model: {', '.join(MODELS)} (default minilm)")
    parser.add_argument("--method", default="rollout",
                        help=f"one of {', '.join(METHODS)}; with --pair one of {', '.join(PAIR_METHODS)} "
                             "(default rollout)")
    parser.add_argument("--pair", default=None, metavar="OTHER",
                        help="explain the embedding similarity of the text and OTHER token by token")
    parser.add_argument("--mechanism", default="softmax",
                        help="run the model's attention as this registered mechanism (default softmax, as trained)")
    parser.add_argument("--head", type=non_negative_int, default=None,
                        help="draw the line view for this head (default: the mean of the heads)")
    parser.add_argument("--out", default="view.html", help="the HTML file to write (default ./view.html)")


def run(args) -> int:
    from ..bench.report.explain import explain_page

    page = explain_page(args.text, args.model, args.method, args.head, args.mechanism, args.pair)
    out = Path(args.out)
    out.write_text(page)
    print(f"explain: {out}")
    return 0
