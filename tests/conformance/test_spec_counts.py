"""Every spec's counting functions take the registry's signature (benchmarks call them for any mechanism)."""
import pytest

import attnkit


@pytest.mark.parametrize("name", attnkit.mechanisms())
def test_state_size_takes_value_dim_and_params(name):
    spec = attnkit.spec(name)
    params = dict(spec.defaults)
    narrow = spec.state_size(1, 2, 2, 64, 16, 16, **params)
    wide = spec.state_size(1, 2, 2, 64, 16, 48, **params)
    assert isinstance(narrow, int) and 0 < narrow <= wide
    assert spec.state_size(1, 2, 2, 64, 16) == narrow  # v_dim defaults to head_dim
