"""The documentation's links: every relative link in README.md, docs/*.md and
benchmarks/README.md points at a file that exists, and every ``#anchor`` at a heading of its
file. README stays short and keeps the commands that .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# .ci/run runs these; README must show them as they are.
COMMANDS = (
    "pip install -e '.[test]' && python -m vae_study run studies/beta_sweep.yaml",
    "python -m pytest",
    "python -m pytest -m slow",
)

LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def markdown_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their 1-based numbers."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text, lowercase, punctuation dropped, spaces '-'."""
    text = LINK.sub(lambda m: m.group(1), heading)
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if m:
            base = github_anchor(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """The targets of the Markdown links in ``path``, outside code blocks and code spans."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("code", line)
        found += [(number, m.group(2)) for m in LINK.finditer(line)]
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path}:{number}"
        if not dest.exists():
            problems.append(f"{where}: {target}: no such file {dest}")
        elif anchor and (dest.is_dir() or anchor not in anchors(dest)):
            problems.append(f"{where}: {target}: no heading with anchor #{anchor} in {dest}")
    return problems


def test_the_documentation_files_exist_and_have_links():
    files = markdown_files()
    assert all(p.is_file() for p in files), [str(p) for p in files if not p.is_file()]
    assert len(files) > 3, "docs/ holds no Markdown files"
    assert sum(len(links(p)) for p in files) > 20, "too few links found: is the parser working?"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_readme_is_short_and_shows_the_ci_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for command in COMMANDS:
        assert command in text, command


def test_the_checker_finds_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# A page\n\n## One configuration, no search: `fit`\n\n"
        "[ok](#one-configuration-no-search-fit) [ok](#a-page) [web](https://example.org)\n"
        "[gone](missing.md) [bad anchor](#nowhere) [up](../top.md#top)\n"
        "```\n[in code](nothing.md)\n# not a heading\n```\n"
        "`[in a span](nothing.md)`\n"
    )
    (tmp_path / "top.md").write_text("# Top\n")
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "missing.md" in problems[0] and "#nowhere" in problems[1]
    assert github_anchor("Studies shipped in `studies/`") == "studies-shipped-in-studies"
    assert github_anchor("Seed replicates, packs and confirmation") == (
        "seed-replicates-packs-and-confirmation"
    )
