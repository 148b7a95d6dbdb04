"""The peak-memory probe: a call that holds a known tensor reads its size, an empty call reads ~0."""
import torch

from attnkit.bench.memory import peak_mb

MB = 2**20


def test_a_200_mib_tensor_reads_200_mib():
    out, peak = peak_mb(lambda: torch.ones(200 * MB // 4))
    assert out.numel() * 4 == 200 * MB
    assert 180 <= peak <= 220


def test_a_freed_temporary_is_seen_while_the_call_runs():
    def call():
        x = torch.ones(200 * MB // 4)
        for _ in range(5):  # keep it alive for a few milliseconds
            x.mul_(1.0001)
        return float(x[0])

    _, peak = peak_mb(call)
    assert 180 <= peak <= 220


def test_a_call_that_allocates_nothing_reads_about_zero():
    _, peak = peak_mb(lambda: sum(range(1000)))
    assert peak < 5
