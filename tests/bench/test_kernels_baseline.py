"""The kernels suite's SDPA forward+backward baseline runs as few calls as memory allows."""
from attnkit.bench.suites.kernels import SDPA_BACKWARD_BYTES, _sdpa_backward_heads


def test_all_heads_in_one_call_where_they_fit():
    assert _sdpa_backward_heads(1, 8, 512) == 8
    assert _sdpa_backward_heads(1, 8, 4096) == 8


def test_groups_of_heads_that_fit_beyond():
    for n in (8192, 16384, 32768):
        heads = _sdpa_backward_heads(1, 8, n)
        assert 1 <= heads < 8
        assert heads == 1 or heads * 16 * n * n <= SDPA_BACKWARD_BYTES
    assert _sdpa_backward_heads(1, 8, 16384) == 1
