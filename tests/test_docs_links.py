"""The repository's own documents link to files and headings that exist.

Every relative Markdown link in ``README.md`` and ``docs/*.md`` names a file of the repository,
and a link with ``#anchor`` names a heading of its target as GitHub spells its anchors
(lower case, punctuation dropped, spaces as hyphens, ``-1``, ``-2`` ... for repeats).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text.

    >>> sorted(anchors("# A b\\n## `x` (2026-12-07, later)\\n## A b\\n"))
    ['a-b', 'a-b-1', 'x-2026-12-07-later']
    """
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8")))


def test_the_anchors_follow_githubs_rules():
    text = "# Fleets: many learners in one program\n## Chunks (2026-12-07)\n"
    assert anchors(text) == {"fleets-many-learners-in-one-program", "chunks-2026-12-07"}


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text("utf-8")):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{doc.name}: {broken}"
    assert doc.name != "README.md" or "docs/performance.md" in " ".join(links(doc))
