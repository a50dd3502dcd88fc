"""The README stays a newcomer's page and points only at pages that exist; every docs page is
on the site's menu (``mkdocs build --strict`` in ``make docs`` checks the links inside them)."""

from __future__ import annotations

import re

import yaml

from tests.runs import REPO


def test_the_readme_is_at_most_300_lines_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    links = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if not t.startswith(("http://", "https://"))]
    assert any(t.startswith("docs/") for t in links)
    missing = [t for t in links if not (REPO / t).exists()]
    assert not missing, missing


def test_every_docs_page_is_on_the_menu():
    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from pages(v)
        elif isinstance(node, list):
            for v in node:
                yield from pages(v)

    nav = set(pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]))
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert on_disk == nav
