"""The results store: every benchmark run in one embedded SQLite database.

A *run* is one invocation of a suite with one configuration; it records the
machine (CPU, threads, GEMM GFLOP/s), the torch and attnkit versions, the git
revision and the times it started and finished. A run holds *rows*: one per
measured item, keyed by a small JSON object (e.g. ``{"mechanism": "softmax",
"N": 1024}``) and carrying a JSON object of figures. Rows are written as they
finish, so an interrupted run keeps what it measured and can be resumed.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL,
    config TEXT NOT NULL,
    machine TEXT NOT NULL,
    torch TEXT NOT NULL,
    attnkit TEXT NOT NULL,
    git_rev TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    figures TEXT NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
"""

STATUSES = ("running", "done", "interrupted", "failed")


def default_db_path() -> Path:
    """``$ATTNKIT_DB``, else ``$XDG_DATA_HOME/attnkit/results.sqlite`` (``~/.local/share`` by default)."""
    if os.environ.get("ATTNKIT_DB"):
        return Path(os.environ["ATTNKIT_DB"])
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "attnkit" / "results.sqlite"


def git_revision() -> str:
    """The commit attnkit's source is checked out at, or ``"unknown"`` outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def canonical(obj) -> str:
    """The JSON text a key or configuration is stored and compared as."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Store:
    """A results database. ``Store(path)`` creates the file and its tables if needed."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def start_run(self, suite: str, config: dict, machine: dict, torch_version: str, attnkit_version: str) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (suite, config, machine, torch, attnkit, git_rev, started, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
            (suite, canonical(config), json.dumps(machine), torch_version, attnkit_version, git_revision(),
             time.time()),
        )
        self.db.commit()
        return int(cur.lastrowid)

    def resumable_run(self, suite: str, config: dict) -> int | None:
        """The latest unfinished run of ``suite`` with exactly this configuration, if any."""
        row = self.db.execute(
            "SELECT id FROM runs WHERE suite = ? AND config = ? AND status != 'done' ORDER BY id DESC LIMIT 1",
            (suite, canonical(config)),
        ).fetchone()
        return None if row is None else int(row[0])

    def set_status(self, run_id: int, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        finished = None if status == "running" else time.time()
        self.db.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, finished, run_id))
        self.db.commit()

    def add_row(self, run_id: int, key: dict, figures: dict) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO rows (run_id, key, figures, recorded) VALUES (?, ?, ?, ?)",
            (run_id, canonical(key), json.dumps(figures), time.time()),
        )
        self.db.commit()

    def done_keys(self, run_id: int) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM rows WHERE run_id = ?", (run_id,))}

    def run(self, run_id: int) -> dict:
        row = self.db.execute(
            "SELECT id, suite, config, machine, torch, attnkit, git_rev, started, finished, status "
            "FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise ValueError(f"run {run_id} is not in {self.path}")
        return _run_dict(row)

    def latest_run(self, suite: str) -> dict | None:
        """The newest run of ``suite`` that has rows (finished or interrupted), or None."""
        row = self.db.execute(
            "SELECT id FROM runs WHERE suite = ? AND id IN (SELECT run_id FROM rows) ORDER BY id DESC LIMIT 1",
            (suite,),
        ).fetchone()
        return None if row is None else self.run(int(row[0]))

    def keyed_rows(self, run_id: int) -> list[tuple[dict, dict]]:
        """Each row as ``(key, figures)``, in the order they were measured."""
        cur = self.db.execute("SELECT key, figures FROM rows WHERE run_id = ? ORDER BY recorded", (run_id,))
        return [(json.loads(key), json.loads(figures)) for key, figures in cur]

    def rows(self, run_id: int) -> list[dict]:
        """Each row as one flat dict: its key fields, then its figures."""
        return [{**key, **figures} for key, figures in self.keyed_rows(run_id)]


def _run_dict(row) -> dict:
    names = ("id", "suite", "config", "machine", "torch", "attnkit", "git_rev", "started", "finished", "status")
    d = dict(zip(names, row))
    d["config"] = json.loads(d["config"])
    d["machine"] = json.loads(d["machine"])
    return d
