"""``attnkit train seer`` and ``train seer-r``: block gates distilled into a trained softmax LM (base frozen).

    attnkit train seer --from ckpt.pt --block-size 16 --top-k 4 --minutes 5
    attnkit train seer-r --from ckpt.pt --block-size 16 --top-k 2 --minutes 5 --out gated.pt

``seer`` trains SeerAttention's prefill gates, ``seer-r`` SeerAttention-R's decode gates (every
query reads its own block and the ``--top-k - 1`` past blocks its gate ranks first: one call
equals decoding token by token). Both print held-out perplexity dense, with untrained gates and
after training, and the attention mass the chosen blocks hold; ``train.run_seer`` runs them.
``seer-r --out`` writes the gated LM (base weights and gates) as an LM checkpoint; ``attnkit bench
sparse --lm-recall --seer-checkpoint`` reads its gates.
"""
from __future__ import annotations


def add_arguments(sub) -> None:
    s = sub.add_parser("seer-r", help="SeerAttention-R: distil decode block gates into a trained softmax LM "
                                      "(base frozen)")
    _add_distillation_arguments(
        s, block_size="keys per gated block", top_k="blocks each query reads (its own included)",
        pool="distillation target per block: its largest attention weight (the authors' code) or its attention mass")
    s.add_argument("--out", default=None, help="write the gated LM checkpoint here")

    s = sub.add_parser("seer", help="SeerAttention: distil block gates into a trained softmax LM (base frozen)")
    _add_distillation_arguments(
        s, block_size="tokens per gated block", top_k="key blocks each query block keeps (diagonal included)",
        pool="distillation target: 2-D max pooling of the attention map (the paper) or block mass")


def _add_distillation_arguments(s, *, block_size: str, top_k: str, pool: str) -> None:
    """The flags both commands share: the base checkpoint, the gates' shape (``block_size``, ``top_k`` and
    ``pool`` are each command's help for them) and the distillation run."""
    from ..bench.options import positive_float, positive_int

    s.add_argument("--from", dest="base", required=True, help="checkpoint of a softmax LM (attnkit train lm --out)")
    s.add_argument("--block-size", type=positive_int, default=16, help=block_size)
    s.add_argument("--top-k", type=positive_int, default=4, help=top_k)
    s.add_argument("--pool", choices=("max", "sum"), default="max", help=pool)
    s.add_argument("--context", type=positive_int, default=None, help="default: the checkpoint's training context")
    s.add_argument("--batch", type=positive_int, default=16)
    s.add_argument("--lr", type=positive_float, default=1e-2)
    s.add_argument("--minutes", type=positive_float, default=5.0)
    s.add_argument("--max-steps", type=positive_int, default=None)
    s.add_argument("--eval-tokens", type=positive_int, default=65536)
    s.add_argument("--threads", type=positive_int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print the final metrics as JSON")
