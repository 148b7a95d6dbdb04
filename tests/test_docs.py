"""The README and docs/ are a user guide: no development log, and every link resolves inside the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
DEVELOPMENT_LOG = [
    r"\b[Ii]ssue \d", r"\bthe issue\b", r"\bthe lead\b", r"\bsessions?\b", r"\bbranch `", r"\(branch\b",
    r"\bengineers?\b", r"\bshared/", r"MECHANISMS\.md", r"BENCHMARKS\.md", r"\bF\d\d\b", r"/work/", r"/tmp/",
]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_development_log(page):
    text = page.read_text()
    found = [(pattern, m.group(0)) for pattern in DEVELOPMENT_LOG for m in re.finditer(pattern, text)]
    assert not found, f"{page.name}: {found}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"https?://", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: {target}"
