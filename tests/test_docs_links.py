"""Every relative link in the README, docs/ and the faces' and families' READMEs leads somewhere: the file
exists, and a ``#fragment`` names a heading of the page it points to (as GitHub makes anchors of headings)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def pages() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found += sorted((ROOT / "gateway").rglob("README.md")) + sorted((ROOT / "plugins").rglob("README.md"))
    found += sorted((ROOT / "mibs").glob("*.md"))
    return [p for p in found if p.is_file()]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text())
    out = set()
    for title in HEADING.findall(text):
        title = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", title).strip().lower()
        out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_front_page():
    """At most about 200 lines, with the two commands and the pictures it shows present in the tree."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make run" in readme and "make test" in readme
    pictures = [b for _, b in LINK.findall(readme) if b]
    assert len(pictures) >= 3 and all((ROOT / p).is_file() for p in pictures)
