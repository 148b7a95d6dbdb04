"""The README's mechanism list is generated from the registry: it must be current."""
from pathlib import Path

import attnkit
from attnkit.commands.list import markdown_table
from attnkit.registry import get

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_mechanism_table_is_generated_from_the_registry():
    text = README.read_text()
    start, end = "<!-- mechanisms:start -->", "<!-- mechanisms:end -->"
    assert start in text and end in text
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    expected = markdown_table([get(n) for n in attnkit.mechanisms()])
    assert block == expected, "README mechanism table is stale: run scripts/update-readme"


def test_readme_api_example_runs():
    text = README.read_text()
    block = text.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})


def test_readme_guide_names_registered_mechanisms():
    """The "which mechanism for which problem" table names mechanisms that exist."""
    import re

    section = README.read_text().split("## Which mechanism for which problem", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = {n for cell in rows for n in re.findall(r"`([a-z0-9_\-]+)`", cell)}
    assert names and names <= set(attnkit.mechanisms()), sorted(names - set(attnkit.mechanisms()))
