"""These tests run many tiny tensor ops: one torch thread each is fastest, and it keeps two
pytest workers from oversubscribing a 2-core machine. The previous setting is restored."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
