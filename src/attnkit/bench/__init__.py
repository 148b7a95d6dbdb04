"""Benchmark suites: each module here is a suite, run as ``attnkit bench <module>``
and exposing ``main(argv) -> int``. Modules starting with ``_`` are helpers."""
