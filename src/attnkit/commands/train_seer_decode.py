"""``attnkit train seer-r``: SeerAttention-R's decode gates distilled into a trained softmax LM (base frozen).

    attnkit train seer-r --from ckpt.pt --block-size 16 --top-k 2 --minutes 5 --out gated.pt

Prints held-out perplexity dense, with untrained gates and after training (every query reads
its own block and the ``--top-k - 1`` past blocks its gate ranks first: one call equals
decoding token by token), and the attention mass the chosen blocks hold; ``train.run_seer`` runs it. ``--out`` writes the
gated LM (base weights and gates) as an LM checkpoint; ``attnkit bench sparse --lm-recall
--seer-checkpoint`` reads its gates.
"""
from __future__ import annotations


def add_arguments(sub) -> None:
    from ..bench.options import positive_float, positive_int

    s = sub.add_parser("seer-r", help="SeerAttention-R: distil decode block gates into a trained softmax LM "
                                      "(base frozen)")
    s.add_argument("--from", dest="base", required=True, help="checkpoint of a softmax LM (attnkit train lm --out)")
    s.add_argument("--block-size", type=positive_int, default=16, help="keys per gated block")
    s.add_argument("--top-k", type=positive_int, default=4, help="blocks each query reads (its own included)")
    s.add_argument("--pool", choices=("max", "sum"), default="max",
                   help="distillation target per block: its largest attention weight (the authors' code) or its "
                        "attention mass")
    s.add_argument("--context", type=positive_int, default=None, help="default: the checkpoint's training context")
    s.add_argument("--batch", type=positive_int, default=16)
    s.add_argument("--lr", type=positive_float, default=1e-2)
    s.add_argument("--minutes", type=positive_float, default=5.0)
    s.add_argument("--max-steps", type=positive_int, default=None)
    s.add_argument("--eval-tokens", type=positive_int, default=65536)
    s.add_argument("--threads", type=positive_int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write the gated LM checkpoint here")
    s.add_argument("--json", action="store_true", help="print the final metrics as JSON")
