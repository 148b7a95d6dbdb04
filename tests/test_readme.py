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
    block = text.split("## API in ten lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})
