"""Quest's decode step has two forms on the CPU: the compiled kernel (when it can be built here) and the torch
operators. ``decode_form`` runs a test once with each."""
import pytest

from attnkit.kernels import compiled


@pytest.fixture(scope="session")
def built_quest_kernel():
    """The compiled kernel, built if it is not (a machine without a C++ compiler or ninja skips, saying which)."""
    missing = compiled.missing_tools()
    if missing:
        pytest.skip(f"the compiled kernel cannot be built here: missing {' and '.join(missing)}")
    return compiled.build("quest_decode")


@pytest.fixture
def quest_kernel(built_quest_kernel, monkeypatch):
    """The compiled kernel, switched on for this test even where ``ATTNKIT_COMPILED_KERNELS=0`` is set."""
    monkeypatch.delenv(compiled.SWITCH, raising=False)
    return built_quest_kernel


@pytest.fixture(params=["compiled", "torch"])
def decode_form(request, monkeypatch):
    """Which form Quest's decode steps take in this test: ``compiled`` (built, and used) or ``torch``."""
    if request.param == "compiled":
        request.getfixturevalue("quest_kernel")
    else:
        monkeypatch.setenv(compiled.SWITCH, "0")
    assert (compiled.loaded("quest_decode") is not None) == (request.param == "compiled")
    return request.param
