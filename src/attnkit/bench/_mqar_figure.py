"""The Zoology figure of ``attnkit bench mqar --figure``: MQAR accuracy against model width, per mechanism.

"Zoology: Measuring and Improving Recall in Efficient Language Models" (figure 2, and the Based
paper's figure 2) trains each sequence mixer at several model widths and sequence lengths and plots
the best accuracy of a learning-rate sweep against the width: attention solves MQAR at every width,
the attention-free mixers need the width (and so the state) to grow with the number of key-value
pairs. This configuration runs widths 64, 128 and 256, lengths 64 to 256 with up to 64 pairs, three
seeds, and the roles of the quick configuration plus the attention-free baselines. Each point is the
mean over seeds of the sweep's best accuracy, with a 95% confidence interval (Student's t).
"""
from __future__ import annotations

import math

FIGURE = dict(vocab=512, d_model=[64, 128, 256], heads=1, seeds=[0, 1, 2],
              settings=[[64, 4], [128, 8], [256, 16], [256, 32], [256, 64]],
              lrs={"*": [1e-3, 1e-2]}, epochs=16, train_examples=10_000, test_examples=500, batch=64)

# the attention-free and gated baselines the figure adds to the quick configuration's roles
FIGURE_ROLES = {
    "gla": {"candidates": ("gla",)},
    "mamba-2": {"candidates": ("mamba2",)},
    "mamba": {"candidates": ("mamba",)},
    "hyena": {"candidates": ("hyena",)},
    "h3": {"candidates": ("h3",)},
    "rwkv-7": {"candidates": ("rwkv7",)},
    "rwkv-6": {"candidates": ("rwkv6",)},
}

# two-sided 95% quantiles of Student's t by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def over_seeds(best: list[dict]) -> list[dict]:
    """Mean best accuracy over seeds per (role, mechanism, L, K, d), with the half-width of its 95% interval."""
    groups: dict[tuple, list[dict]] = {}
    for r in best:
        if "accuracy" in r:
            groups.setdefault((r["role"], r["mechanism"], r["L"], r["K"], r["d"]), []).append(r)
    out = []
    for (role, mechanism, L, K, d), rows in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        acc = [r["accuracy"] for r in rows]
        n = len(acc)
        mean = sum(acc) / n
        half = None
        if n > 1:
            sd = math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1))
            half = _T95.get(n - 1, 1.96) * sd / math.sqrt(n)
        out.append({"role": role, "mechanism": mechanism, "L": L, "K": K, "d": d, "accuracy": round(mean, 4),
                    "ci95": None if half is None else round(half, 4), "seeds": n,
                    "state_size": rows[0].get("state_size")})
    return out
