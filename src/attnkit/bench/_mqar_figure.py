"""The Zoology figure of ``attnkit bench mqar --figure``: MQAR accuracy against model width, per mechanism.

"Zoology: Measuring and Improving Recall in Efficient Language Models" (figure 2, and the Based
paper's figure 2) trains each sequence mixer at several model widths and sequence lengths and plots
the best accuracy of a learning-rate sweep against the width: attention solves MQAR at every width,
the attention-free mixers need the width (and so the state) to grow with the number of key-value
pairs. This configuration runs widths 64, 128 and 256, three seeds, and the roles of the quick
configuration plus the attention-free baselines. Each point is the mean over seeds, with a 95%
confidence interval (Student's t).

The budget. Zoology's sweep (four learning rates at every point, 20k-100k examples, up to 64 epochs)
is days on two CPU cores: a training step (batch 64) of these small models costs 0.04-0.11 CPU
seconds at L=64, d=64 and 0.7-2.6 at L=256, d=256 on one core. So the figure keeps every width, seed
and role and cuts three things, as Zoology's own smaller runs do:

- one learning rate per role, the best of ``lrs`` on the cheapest point (d=64, the first (L, K),
  seed 0), run first and stored as its own run; every other point trains at that rate;
- three (L, K) settings with a quarter of the tokens being key-value pairs, (64, 16), (128, 32),
  (256, 64), instead of five;
- 5,000 training examples and at most 32 epochs (2,528 steps; Zoology's early stop at 99% accuracy
  ends solved runs sooner), where Zoology takes 20k-100k examples and 32-64 epochs. Fewer epochs
  are not enough: MQAR training sits on a loss plateau, then drops within an epoch or two, and the
  cosine schedule must still have its rate when it does. At d=64, (128, 32) attention leaves the
  plateau after 632-711 steps of a 32-epoch schedule; with 8 epochs (632 steps) it stays at chance.

The trainings run cheapest first: by width, then (L, K), then seed, so a figure cut short has every
seed of the points it reached. Finished trainings accumulate in a text file (:mod:`._mqar_points`)
that every later run, on any machine, continues; ``--budget`` times what each point costs
(:mod:`._mqar_budget`).
"""
from __future__ import annotations

import math

from .store import canonical

FIGURE = dict(vocab=512, d_model=[64, 128, 256], heads=1, seeds=[0, 1, 2], settings=[[64, 16], [128, 32], [256, 64]],
              lrs={"*": [1e-3, 3e-3, 1e-2]}, epochs=32, train_examples=5_000, test_examples=500, batch=64)

# the attention-free and gated baselines the figure adds to the quick configuration's roles.
# RWKV is RWKV-7. Mamba-1 projects q, k (its C, B) to the paper's d_state = 16 per channel and runs the recurrent
# form: one step at batch 64, L=256, d=256 peaks at 2.3 GiB of memory (the chunked form's decays hold > 6.5 GiB).
FIGURE_ROLES = {
    # GLA's layer: the output normed per head, then gated: the paper's Y = (swish(X W_r + b_r) * norm(O)) W_O (an RMS
    # norm, as fla's layer)
    "gla": {"candidates": ("gla",), "layer": {"gated_norm": True}},
    "mamba-1": {"candidates": ("mamba",), "qk_dim": 16, "form": "recurrent"},
    # Mamba-2's block: a short convolution and SiLU on x, B, C (v, k, q) and the gated RMS norm, gate first
    "mamba-2": {"candidates": ("mamba2",), "layer": {"qkv_conv": True, "gated_norm": True, "gate_before_norm": True}},
    "hyena": {"candidates": ("hyena",)},
    "h3": {"candidates": ("h3",)},
    "rwkv-7": {"candidates": ("rwkv7",)},
}


def lr_sweep_config(config: dict) -> dict:
    """The sweep that chooses each role's learning rate: the figure's first width (``sweep_width`` when
    ``--widths`` leaves it out of the points), its first (L, K) and its first seed only."""
    width = config.get("sweep_width", config["d_model"][0])
    return {**config, "d_model": [width], "settings": [config["settings"][0]],
            "seeds": [config["seeds"][0]], "stage": "learning-rate sweep"}


def chosen_lrs(best: list[dict], roles: list[str]) -> dict:
    """Each role's learning rate from its sweep's best row (a role whose sweep failed keeps the whole sweep)."""
    by_role = {r["role"]: r["lr"] for r in best if "accuracy" in r}
    return {role: [by_role[role]] for role in roles if role in by_role}


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


POINT_FIELDS = ("role", "mechanism", "L", "K", "d", "seed", "lr")


def point_key(row: dict) -> str:
    """The key a training is planned, stored and looked up by: role, mechanism, L, K, width, seed, rate."""
    return canonical({k: row[k] for k in POINT_FIELDS if k in row})


def sweep_rows(rows: list[dict], sweep: dict) -> list[dict]:
    """The rows of the learning-rate sweep: the sweep's width, (L, K) and seed, at one of its rates."""
    d, (L, K), seed = sweep["d_model"][0], sweep["settings"][0], sweep["seeds"][0]
    rates = {lr for rates in sweep["lrs"].values() for lr in rates}
    return [r for r in rows if (r["d"], r["L"], r["K"], r.get("seed")) == (d, L, K, seed) and r["lr"] in rates]


def missing_points(planned: list[dict], rows: list[dict]) -> list[dict]:
    """The planned trainings no row holds yet, grouped: one entry per (seed, L, K, d) with its roles."""
    done = {point_key(r) for r in rows}
    groups: dict[tuple, list[str]] = {}
    for item in planned:
        if point_key(item) not in done:
            roles = groups.setdefault((item["seed"], item["L"], item["K"], item["d"]), [])
            if item["role"] not in roles:
                roles.append(item["role"])
    return [{"seed": s, "L": L, "K": K, "d": d, "roles": roles} for (s, L, K, d), roles in groups.items()]


def by_cell(best: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by (L, K, d): the cells in which the published ordering is checked."""
    cells: dict[tuple, list[dict]] = {}
    for r in best:
        cells.setdefault((r["L"], r["K"], r["d"]), []).append(r)
    return dict(sorted(cells.items()))
