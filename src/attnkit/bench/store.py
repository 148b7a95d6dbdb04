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

# Marks of an attnkit results database (``PRAGMA application_id`` / ``user_version``): attnkit opens
# only its own databases (and, once, unmarked ones holding exactly its two tables, from before the mark).
APPLICATION_ID = 0x61746B74  # "atkt"
SCHEMA_VERSION = 1
TABLES = {"runs", "rows"}

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


class StoreError(ValueError):
    """The results database cannot be used: the message says which path and why, in one line."""


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
    """A results database. ``Store(path)`` creates the file and its tables if needed; with
    ``create=False`` a missing database is an error (reading never creates one). A path that is a
    directory, sits under a regular file, is not an SQLite file, or holds another program's
    database raises :class:`StoreError` before anything is written."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True):
        self.path = Path(path) if path is not None else default_db_path()
        if self.path.is_dir():
            raise StoreError(f"results database {self.path} is a directory; give a file path")
        if not self.path.exists():
            if not create:
                raise StoreError(f"no results database at {self.path}: run a benchmark first (attnkit bench)")
            _make_parent(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self._check_or_initialise()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results database {self.path} cannot be used: {exc} "
                             "(not an SQLite file, or a damaged one)") from None
        except sqlite3.Error as exc:  # e.g. a read-only folder
            raise StoreError(f"results database {self.path} cannot be opened: {exc}") from None

    def _check_or_initialise(self) -> None:
        app = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = {n for (n,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        if app == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise StoreError(f"results database {self.path} has schema version {version}, written by a newer "
                                 f"attnkit (this one reads up to {SCHEMA_VERSION})")
            return
        if app != 0 or (tables and tables != TABLES):
            owner = f"application id {app:#x}" if app else "tables " + ", ".join(sorted(tables))
            raise StoreError(f"{self.path} is another program's SQLite database ({owner}); attnkit writes only "
                             "its own results databases: choose another --db")
        with self.db:  # a new database, or an attnkit one from before the marks
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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


def _make_parent(path: Path) -> None:
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise StoreError(f"cannot create the results database {path}: {parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the results database {path}: {exc.strerror or exc}") from None


def _run_dict(row) -> dict:
    names = ("id", "suite", "config", "machine", "torch", "attnkit", "git_rev", "started", "finished", "status")
    d = dict(zip(names, row))
    d["config"] = json.loads(d["config"])
    d["machine"] = json.loads(d["machine"])
    return d
