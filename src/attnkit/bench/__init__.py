"""Benchmarks: the suites (``bench/suites/``, one module each), the results
database they write (:mod:`.store`), the shared runner (:mod:`.runner`:
progress, Ctrl-C, ``--resume``), the one timing loop (:mod:`.timing`), the
machine's reference rates (:mod:`.machine`) and the HTML report (:mod:`.report`)."""
