"""Run a suite through the command line into a fresh database and read back its stored rows."""
from functools import partial
from unittest import mock

from attnkit.bench import machine
from attnkit.bench.store import Store
from attnkit.cli import main


def run_suite(tmp_path, suite: str, *options: str) -> tuple[dict, list[dict]]:
    """``attnkit bench SUITE OPTIONS --db tmp --no-progress --threads 1``: the run's record and its rows.
    The run's GEMM reference rate is measured on 256 x 256 matrices (the suites' 2048 takes seconds on one
    thread; its value is only stored and printed)."""
    db = tmp_path / "results.sqlite"
    small_gemm = partial(machine.gemm_gflops, n=256)
    with mock.patch.object(machine, "gemm_gflops", small_gemm):
        assert main(["bench", suite, *options, "--db", str(db), "--no-progress", "--threads", "1"]) == 0
    store = Store(db, create=False)
    run = store.latest_run(suite)
    assert run is not None and run["status"] == "done"
    return run, store.rows(run["id"])
