"""The finished points of ``attnkit bench mqar --figure``, kept as a JSON-lines text file.

The Zoology figure takes far longer than one sitting on a small machine, so its trainings accumulate in
a text file that lives beside the code (the repository's ``docs/mqar-figure.jsonl``) rather
than in a results database on one machine: every run of the figure skips the trainings the file
already holds and appends each one it finishes, and its summary is drawn from the whole file.
Each line is one training::

    {"item": {"role", "mechanism", "L", "K", "d", "seed", "lr"},
     "setup": {the figure's sizes and the role's layer: what makes two trainings comparable},
     "figures": {"accuracy", "epochs", "status", "seconds", "state_size", "history", ...},
     "commit": the code's git revision, "machine": {"cpu", "threads", "gemm_gflops_fp32"},
     "recorded": UTC time}

Lines of another setup (other sizes, epochs or layer options) are never mixed into the figure; the
summary says how many it left aside. A training that raised is not a point: it stays missing and
runs again next time.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .store import canonical

# the configuration entries that change what a training measures (the widths, settings and seeds only
# say which points there are)
SETUP_KEYS = ("vocab", "heads", "epochs", "train_examples", "test_examples", "batch")


def default_points_path() -> Path:
    """The repository's points file when attnkit runs from its checkout, else ``./mqar-figure.jsonl``."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "docs").is_dir():
        return root / "docs" / "mqar-figure.jsonl"
    return Path("mqar-figure.jsonl")


def setup_of(config: dict, entry: dict) -> dict:
    """What a point's training depends on beyond its key: the figure's sizes and the role's layer."""
    return {**{k: config[k] for k in SETUP_KEYS},
            "params": entry["params"], "qk_dim": entry["qk_dim"], "layer": entry["layer"], "form": entry.get("form")}


class PointsFile:
    """Read and append the figure's points. Reading a missing file gives no points; a line that is not
    a JSON object with an item, a setup and figures raises ValueError naming the file and line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"--points: {self.path} is a directory; give the path of a .jsonl file")

    def lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for number, text in enumerate(self.path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--points: {self.path} line {number} is not JSON ({exc.msg})") from None
            if not isinstance(line, dict) or not {"item", "setup", "figures"} <= set(line):
                raise ValueError(f"--points: {self.path} line {number} is not a figure point "
                                 "(a JSON object with item, setup and figures)")
            out.append(line)
        return out

    def points(self, config: dict, entries: dict) -> tuple[list[dict], int]:
        """The points of this configuration as flat rows (item fields, then figures), and how many lines
        of other setups (or of roles not in ``entries``) were left aside."""
        rows, aside = [], 0
        for line in self.lines():
            entry = entries.get(line["item"].get("role"))
            if entry is None or entry["mechanism"] != line["item"].get("mechanism") \
                    or canonical(line["setup"]) != canonical(setup_of(config, entry)):
                aside += 1
                continue
            rows.append({**line["item"], **line["figures"], "commit": line.get("commit")})
        return rows, aside

    def append(self, item: dict, figures: dict, config: dict, entry: dict, machine: dict, commit: str) -> None:
        """Add one finished training, measured by the code of ``commit`` on ``machine`` (a row with an
        ``error`` is not a point and is not written)."""
        if "error" in figures or "accuracy" not in figures:
            return
        line = {"item": item, "setup": setup_of(config, entry), "figures": figures, "commit": commit,
                "machine": {k: machine.get(k) for k in ("cpu", "threads", "gemm_gflops_fp32")},
                "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
