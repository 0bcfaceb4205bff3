"""The docs keep up with the code: every relative link in README.md and docs/ points at a
file that exists, and every `#anchor` at a heading of the page it names (GitHub's anchor
rules); every key an agent or `[supervisor]` takes has its row in docs/manifest.md."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from supervisor.manifest import AgentKeys, Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```", re.S)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped,
    spaces to dashes, a repeated heading numbered."""
    found: set[str] = set()
    for line in CODE.sub("", page.read_text()).splitlines():
        if not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def broken_links() -> list[str]:
    broken = []
    for page in PAGES:
        text = CODE.sub("", page.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            if not where.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    return broken


def test_the_anchor_rules_match_githubs() -> None:
    page = ROOT / "docs" / "cluster.md"
    assert "sizing-lease_ttl" in anchors(page)


def test_every_relative_link_resolves() -> None:
    assert broken_links() == []


def test_every_key_has_its_row_in_the_manifest_docs() -> None:
    text = (ROOT / "docs" / "manifest.md").read_text()
    first_cells = re.findall(r"^\| ([^|]*`[^|]*) \|", text, re.M)
    rows = {key for cell in first_cells for key in re.findall(r"`([a-z_]+)[ =`]", cell)}
    keys = {field.name for cls in (AgentKeys, Settings) for field in attrs.fields(cls)}
    assert keys - rows == set()
