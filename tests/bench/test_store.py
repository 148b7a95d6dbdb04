"""The results store: round trip, resume after an interruption, comparison of runs."""
import argparse

import pytest

from attnkit.bench.runner import INTERRUPTED, run_items
from attnkit.bench.store import Store

MACHINE = {"cpu": "test cpu", "threads": 2, "gemm_gflops_fp32": 100.0}


def args_for(db, resume=False):
    return argparse.Namespace(db=str(db), resume=resume, threads=None, no_progress=True)


def test_round_trip(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    run = store.start_run("demo", {"n": [1, 2]}, MACHINE, "2.13.0", "0.1.0")
    store.add_row(run, {"mechanism": "softmax", "N": 64}, {"seconds": 0.5, "note": "ok"})
    store.set_status(run, "done")
    store.close()
    again = Store(tmp_path / "r.sqlite")
    meta = again.run(run)
    assert meta["suite"] == "demo" and meta["config"] == {"n": [1, 2]} and meta["status"] == "done"
    assert meta["machine"] == MACHINE and meta["torch"] == "2.13.0" and meta["attnkit"] == "0.1.0"
    assert meta["git_rev"] and meta["started"] <= meta["finished"]
    assert again.rows(run) == [{"mechanism": "softmax", "N": 64, "seconds": 0.5, "note": "ok"}]
    assert again.latest_run("demo")["id"] == run


def test_interrupted_run_keeps_rows_and_resumes(tmp_path):
    db = tmp_path / "r.sqlite"
    items = [{"i": i} for i in range(5)]
    seen = []

    def stop_at_three(item):
        if item["i"] == 3:
            raise KeyboardInterrupt
        seen.append(item["i"])
        return {"square": item["i"] ** 2}

    code, run = run_items("demo", {"c": 1}, items, stop_at_three, args_for(db), machine=MACHINE)
    assert code == INTERRUPTED
    store = Store(db)
    assert store.run(run)["status"] == "interrupted"
    assert [r["i"] for r in store.rows(run)] == [0, 1, 2]

    def measure(item):
        seen.append(item["i"])
        return {"square": item["i"] ** 2}

    code, resumed = run_items("demo", {"c": 1}, items, measure, args_for(db, resume=True), machine=MACHINE)
    assert code == 0 and resumed == run
    assert seen == [0, 1, 2, 3, 4]  # nothing measured twice
    assert [r["square"] for r in store.rows(run)] == [0, 1, 4, 9, 16]
    assert store.run(run)["status"] == "done"
    # A different configuration never resumes someone else's run.
    _, other = run_items("demo", {"c": 2}, items[:1], measure, args_for(db, resume=True), machine=MACHINE)
    assert other != run


def test_failing_item_is_stored_as_an_error(tmp_path):
    def measure(item):
        raise RuntimeError("out of memory")

    code, run = run_items("demo", {}, [{"i": 0}], measure, args_for(tmp_path / "r.sqlite"), machine=MACHINE)
    assert code == 0
    assert Store(tmp_path / "r.sqlite").rows(run) == [{"i": 0, "error": "RuntimeError: out of memory"}]


def test_bad_status_and_missing_run_are_refused(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="status"):
        store.set_status(1, "finished-ish")
    with pytest.raises(ValueError, match="run 7"):
        store.run(7)


def test_sigterm_interrupts_like_ctrl_c(tmp_path):
    import os
    import signal

    def measure(item):
        if item["i"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"i2": item["i"]}

    before = signal.getsignal(signal.SIGTERM)
    code, run = run_items("demo", {}, [{"i": 0}, {"i": 1}], measure, args_for(tmp_path / "r.sqlite"), machine=MACHINE)
    assert code == INTERRUPTED
    store = Store(tmp_path / "r.sqlite")
    assert store.run(run)["status"] == "interrupted" and len(store.rows(run)) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def _threads_and_square(item):  # module level: picklable for the process pool
    import os

    import torch

    if item["i"] == 2:
        raise RuntimeError("bad item")
    return {"square": item["i"] ** 2, "threads": torch.get_num_threads(), "pid": os.getpid()}


def test_items_run_in_a_pool_of_processes(tmp_path):
    import os

    import torch

    db = tmp_path / "r.sqlite"
    torch.set_num_threads(2)
    code, run = run_items("demo", {}, [{"i": i} for i in range(4)], _threads_and_square, args_for(db),
                          machine=MACHINE, jobs=2)
    rows = sorted(Store(db).rows(run), key=lambda r: r["i"])
    assert code == 0 and [r["i"] for r in rows] == [0, 1, 2, 3]
    assert rows[2] == {"i": 2, "error": "RuntimeError: bad item"}
    done = [r for r in rows if "square" in r]
    assert [r["square"] for r in done] == [0, 1, 9]
    assert all(r["threads"] == 1 and r["pid"] != os.getpid() for r in done)
