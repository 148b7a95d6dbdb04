"""Run a suite through the command line into a fresh database and read back its stored rows."""
from attnkit.bench.store import Store
from attnkit.cli import main


def run_suite(tmp_path, suite: str, *options: str) -> tuple[dict, list[dict]]:
    """``attnkit bench SUITE OPTIONS --db tmp --no-progress --threads 1``: the run's record and its rows."""
    db = tmp_path / "results.sqlite"
    assert main(["bench", suite, *options, "--db", str(db), "--no-progress", "--threads", "1"]) == 0
    store = Store(db, create=False)
    run = store.latest_run(suite)
    assert run is not None and run["status"] == "done"
    return run, store.rows(run["id"])
