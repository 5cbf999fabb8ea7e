"""The README as a user guide: Quick start as CI runs it, the first screens' contents, and every link in
the README and docs/ pointing at a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO
from markdown_it import MarkdownIt

README = REPO / "README.md"
QUICK_START = (
    "bash scripts/setup.sh && .venv/bin/sft train",
    "bash scripts/setup.sh --dev && .venv/bin/python -m pytest -q",
)
PAGES = sorted([README, *(REPO / "docs").rglob("*.md")])


def _lines() -> list[str]:
    return README.read_text().splitlines()


def test_quick_start_commands_are_the_ones_ci_runs() -> None:
    lines = [line.strip() for line in _lines()]
    for command in QUICK_START:
        assert command in lines, command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert QUICK_START[1] in ci  # CI runs the README's test command exactly


def test_first_screens_hold_quick_start_own_csv_and_commands() -> None:
    lines = _lines()
    headings = {line: i for i, line in enumerate(lines) if line.startswith("## ")}
    for heading in ("## Quick start", "## Train on your own CSV", "## Commands"):
        assert headings.get(heading, 999) < 80, heading
    # A newcomer sees how to train on a CSV on the first screen.
    first_screen = "\n".join(lines[:45])
    assert "sft train data=files data.train=" in first_screen


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links_and_anchors(page: Path) -> tuple[list[str], set[str]]:
    tokens = MarkdownIt().parse(page.read_text())
    links, anchors = [], set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            anchors.add(slug(tokens[i + 1].content))
        for child in token.children or []:
            if child.type == "link_open":
                links.append(str(child.attrs["href"]))
            elif child.type == "image":
                links.append(str(child.attrs["src"]))
    return links, anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    links, _ = _links_and_anchors(page)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.relative_to(REPO)}: {link} does not exist"
        if anchor:
            assert anchor in _links_and_anchors(path)[1], f"{page.relative_to(REPO)}: no heading for {link}"


def test_the_readme_links_every_docs_page() -> None:
    links, _ = _links_and_anchors(README)
    linked = {(REPO / link.partition("#")[0]).resolve() for link in links}
    pages = [*(REPO / "docs").glob("*.md"), REPO / "docs" / "results" / "README.md"]
    assert [p for p in pages if p.resolve() not in linked] == []


def test_the_command_list_is_the_catalogs_examples() -> None:
    """The README's command list, `sft --help` and each command's help show one list of examples
    (sftcli/catalog.py): none can drift from the others."""
    from sftcli.catalog import COMMANDS, EXAMPLES

    text = README.read_text()
    block = text[text.index("## Commands\n\n") + len("## Commands\n\n"):text.index("\n\n- `python -m sftcli")]
    shown = [tuple(part.strip() for part in line.split("  # ", 1)) for line in block.splitlines()]
    listed = [example for command in COMMANDS for example in EXAMPLES[command]]
    assert shown == listed
    assert all(any(c.startswith(f"sft {command}") for c, _ in EXAMPLES[command]) for command in COMMANDS)
