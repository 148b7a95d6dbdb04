"""Peak memory of one call: anonymous resident memory sampled while it runs.

``ru_maxrss`` is the high-water mark of *all* resident pages, file-backed ones
included. Under memory pressure the kernel drops file-backed pages (shared
libraries, torch's own code) from the process, so a new allocation can stay
below an earlier high-water mark and the growth reads 0. Anonymous memory
(``RssAnon`` in ``/proc/self/status``: heap, mmapped tensor storage) cannot be
dropped without swap, and it is where every tensor lives, so this probe samples
it from a background thread every ``interval`` seconds while the call runs
(torch releases the GIL in its kernels, so the thread does sample) and reports
the highest sample minus the level just before the call, in MiB.

Memory freed before the call but kept by the C allocator is reused without
growing RSS; suites therefore measure in a fresh subprocess started with
:data:`MALLOC_ENV`, which makes glibc map every buffer of 64 KiB or more on its
own and unmap it when freed.
"""
from __future__ import annotations

import gc
import threading

from .options import UsageError

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def anon_rss_mb() -> float:
    """The process's anonymous resident memory (``RssAnon``), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no RssAnon line: this probe needs Linux >= 4.5")


def peak_mb(fn, interval: float = 0.001):
    """Run ``fn()``; return ``(its result, peak anonymous memory it added in MiB)``.

    The result is still referenced at the last sample, so memory the call
    returns counts as well as the temporaries it freed on the way. The reading
    is of the whole process: memory freed elsewhere while the call runs hides
    as much of the call's, so pending garbage is collected before the baseline
    is read (a collection inside the window would free it there), and the
    suites call this in a fresh subprocess, where no other work runs.
    """
    gc.collect()
    before = anon_rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], anon_rss_mb())
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], anon_rss_mb())
    return out, max(0.0, peak[0] - before)


def available_mb() -> float:
    """Memory the system can give without swapping (``MemAvailable``), in MiB; infinite if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def require(estimate_bytes: float, what: str) -> None:
    """Refuse up front (:class:`UsageError`, one line) a run whose estimated memory exceeds what is available."""
    need, have = estimate_bytes / 2**30, available_mb() / 1024
    if need > have:
        raise UsageError(f"{what} needs about {need:,.1f} GiB of memory and {have:,.1f} GiB is available; "
                         "choose smaller sizes")
