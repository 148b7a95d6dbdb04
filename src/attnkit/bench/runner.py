"""What every suite shares: common options, the stored run, progress, Ctrl-C and resume.

A suite lists its items up front (small JSON keys) and gives a function that
measures one item and returns its figures. :func:`run_items` stores each row as
soon as it is measured, shows a progress bar with an ETA, turns Ctrl-C (or SIGTERM) into an
``interrupted`` run that keeps its rows, and with ``--resume`` continues the
latest unfinished run of the same suite and configuration, skipping what it
already measured.
"""
from __future__ import annotations

import multiprocessing
import signal
import sys
from typing import Callable, Iterable

import torch

from .store import Store, canonical

INTERRUPTED = 130


def open_run(suite: str, config: dict, args, machine: dict | None = None) -> tuple[Store, int]:
    """Open the store and start (or, with ``--resume``, reopen) a run of ``suite``. The machine is
    measured before the run is stored, so a Ctrl-C here leaves no empty run behind."""
    from .. import __version__
    from .machine import machine_info

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    store = Store(args.db)
    run_id = store.resumable_run(suite, config) if args.resume else None
    if run_id is not None:
        store.set_status(run_id, "running")
        print(f"{suite}: resuming run {run_id} in {store.path}")
    else:
        machine = machine if machine is not None else machine_info(device=getattr(args, "device", "cpu"))
        run_id = store.start_run(suite, config, machine, torch.__version__, __version__)
        print(f"{suite}: run {run_id} in {store.path} | threads {machine['threads']}, "
              f"fp32 GEMM {machine.get('gemm_gflops_fp32', '?')} GFLOP/s")
    return store, run_id


def run_items(
    suite: str,
    config: dict,
    items: Iterable[dict],
    measure: Callable[[dict], dict],
    args,
    *,
    describe: Callable[[dict], str] = canonical,
    machine: dict | None = None,
    jobs: int = 1,
    on_row: Callable[[dict, dict], None] | None = None,
) -> tuple[int, int]:
    """Measure every item not yet stored; returns ``(exit code, run id)``.

    ``measure(item)`` returns the figures of one item. An exception other than
    Ctrl-C is stored as the row's ``error`` and the suite moves on. With
    ``jobs > 1`` items run in that many fresh processes (``measure`` must then
    be picklable), each with an equal share of the threads. ``on_row(item, figures)`` sees each row
    once it is stored (in this process).
    """
    items = list(items)
    store, run_id = open_run(suite, config, args, machine)
    done = store.done_keys(run_id)
    todo = [it for it in items if canonical(it) not in done]
    if len(todo) < len(items):
        print(f"{suite}: {len(items) - len(todo)} of {len(items)} items already measured")
    previous = signal.signal(signal.SIGTERM, _terminate)  # `kill` / `timeout` stop a run like Ctrl-C does
    try:
        with _progress(args) as bar:
            task = bar.add_task(suite, total=len(todo)) if bar else None
            for item, figures in _measured(todo, measure, jobs, bar, task, suite, describe):
                store.add_row(run_id, item, figures)
                if on_row:
                    on_row(item, figures)
                if bar:
                    bar.advance(task)
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted")
        kept = len(store.done_keys(run_id))
        print(f"\n{suite}: interrupted; run {run_id} keeps {kept} rows. Continue with --resume.", file=sys.stderr)
        store.close()
        return INTERRUPTED, run_id
    finally:
        signal.signal(signal.SIGTERM, previous)
    store.set_status(run_id, "done")
    store.close()
    return 0, run_id


def _measure_one(measure, item) -> tuple[dict, dict]:
    try:
        return item, measure(item)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing item is a result to report, not a crash
        return item, {"error": f"{type(exc).__name__}: {exc}"}


def _measured(todo, measure, jobs, bar, task, suite, describe):
    """``(item, figures)`` as items finish: in this process, or in a pool of ``jobs`` processes."""
    if jobs <= 1:
        for item in todo:
            if bar:
                bar.update(task, description=f"{suite}: {describe(item)}"[:60])
            yield _measure_one(measure, item)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    if bar:
        bar.update(task, description=f"{suite}: {jobs} processes x {threads} threads"[:60])
    pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,))
    try:
        yield from pool.imap_unordered(_call, [(measure, item) for item in todo])
        pool.close()
    finally:
        pool.terminate()  # on Ctrl-C / SIGTERM: stop the running items now, keep the stored rows
        pool.join()


def _call(args):
    return _measure_one(*args)


def _terminate(signum, frame):
    raise KeyboardInterrupt


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(args):
    if args.no_progress:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), "ETA", TimeRemainingColumn(), transient=False)
