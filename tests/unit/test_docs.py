"""The README stays a newcomer's page and every link of the README and docs/ resolves (file and anchor)."""
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped but '-' and '_', spaces to '-'."""
    headings = [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (anchor and anchor not in _anchors(resolved)):
            broken.append(target)
    assert not broken, f"{page.name}: links that resolve to nothing: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve()
              for target in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []
