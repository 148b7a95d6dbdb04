"""The peak-memory probe: a call that holds a known tensor reads its size, an empty call reads ~0.

The probe reads the whole process's anonymous memory, so memory that anything else in the process frees
while the call runs (another test's thread, its garbage collected in the window) hides as much of the
call's. The suites measure in a fresh subprocess for that reason; so do these tests: the probe runs in
one of its own, started with the suites' ``MALLOC_ENV``.
"""
import json
import os
import subprocess
import sys

import pytest

from attnkit.bench.memory import MALLOC_ENV

PROBE = r"""
import json, torch
from attnkit.bench.memory import peak_mb
MB = 2**20

def held():
    return torch.ones(200 * MB // 4)

def freed_temporary():
    x = torch.ones(200 * MB // 4)
    for _ in range(5):  # keep it alive for a few milliseconds
        x.mul_(1.0001)
    return float(x[0])

out, held_mb = peak_mb(held)
assert out.numel() * 4 == 200 * MB
del out
print(json.dumps({"held": held_mb, "freed_temporary": peak_mb(freed_temporary)[1],
                  "nothing": peak_mb(lambda: sum(range(1000)))[1]}))
"""


@pytest.fixture(scope="module")
def peaks():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_200_mib_tensor_reads_200_mib(peaks):
    assert 180 <= peaks["held"] <= 220


def test_a_freed_temporary_is_seen_while_the_call_runs(peaks):
    assert 180 <= peaks["freed_temporary"] <= 220


def test_a_call_that_allocates_nothing_reads_about_zero(peaks):
    assert peaks["nothing"] < 5
