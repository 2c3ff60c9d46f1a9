"""The in-repo documentation stays consistent with the code: science citations resolve to headings of
docs/science.md, the README stays a short front door, the architecture's file paths exist, and every relative
link in the docs points at a file. Pure text checks: no torch, no server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCIENCE = DOCS / "science.md"
README = ROOT / "README.md"
ARCHITECTURE = DOCS / "architecture.md"

#: the old name of the science reference, which lived outside the repository (built so this file does not match)
OLD_SCIENCE_NAME = "SCIENCE" + ".md"
#: folders never scanned, at any depth: environments and caches
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules"}
#: top-level folders never scanned: raw outputs and generated data
SKIP_TOP = {"results", "data", "test-artifacts", "build", "dist"}
#: files scanned for citations of the science reference
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".json", ".html", ".c", ".mako"}


def _repo_files(suffixes: set[str] | None = None) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        top = Path(dirpath) == ROOT
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
                       and not (top and d in SKIP_TOP)]
        for name in filenames:
            path = Path(dirpath) / name
            if suffixes is None or path.suffix in suffixes:
                found.append(path)
    return sorted(found)


def _headings(markdown: str) -> list[str]:
    """ATX headings (``#`` … ``######``) outside fenced code blocks."""
    heads, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            heads.append(match.group(2))
    return heads


# --- (a) the science reference is cited by its in-repo name only ------------------------------------------------

def test_no_file_cites_the_old_science_reference() -> None:
    offenders = []
    for path in _repo_files(TEXT_SUFFIXES):
        if path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if OLD_SCIENCE_NAME in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"cite docs/science.md instead of {OLD_SCIENCE_NAME} in: {', '.join(offenders)}"


# --- (b) every section the code cites is a heading of docs/science.md --------------------------------------------

CITATION = re.compile(r"docs/science\.md(?P<tail>(?:(?!docs/science\.md)[^\n]){0,120})")
LABEL = re.compile(r"§?\s*(S\d+)\b")
QUOTED = re.compile(r"[\"“]([^\"”\n]{2,60})[\"”]")
#: words that may follow the citation directly and name a section without quotes
BARE_NAMES = {"symbols": "symbols", "notation": "notation", "table": "table"}


def cited_sections(text: str) -> set[str]:
    """Section labels cited as ``docs/science.md §S3``, ``docs/science.md S3, S1``, ``docs/science.md S3 table``,
    ``docs/science.md S3, "Data"``, ``docs/science.md, Data``, ``docs/science.md symbols``."""
    found: set[str] = set()
    for match in CITATION.finditer(text):
        tail = match.group("tail")
        # the citation ends at the closing parenthesis or sentence end that belongs to it
        tail = re.split(r"[)\]]|\.\s|\.$|:\s", tail, maxsplit=1)[0]
        rest = tail
        labels = re.match(r"^\s*,?\s*((?:§?\s*S\d+\b(?:\s*(?:,|and)\s*)?)+)", rest)
        if labels:
            found.update(LABEL.findall(labels.group(1)))
            rest = rest[labels.end():]
            bare = re.match(r"^\s+(table)\b", rest)
            if bare:
                found.add(BARE_NAMES[bare.group(1)])
        else:
            bare = re.match(r"^\s+(symbols|notation)\b", rest)
            if bare:
                found.add(BARE_NAMES[bare.group(1)])
            named = re.match(r"^\s*,\s*([A-Z][A-Za-z -]{1,40}?)\s*(?:[,;]|$)", rest)
            if named:
                found.add(named.group(1).strip())
        found.update(q.strip() for q in QUOTED.findall(tail))
    return found


def _heading_has(headings: list[str], label: str) -> bool:
    if re.fullmatch(r"S\d+", label):
        return any(re.search(rf"\b{label}\b", h) for h in headings)
    return any(label.lower() in h.lower() for h in headings)


def test_citation_parser_reads_every_form() -> None:
    sample = ('"""Rule (docs/science.md S3, S1, S4). Data (docs/science.md S3, "Meta-learning protocol" and "Data")\n'
              "# docs/science.md §S5: replication\n# (docs/science.md, Data)\n# docs/science.md S3 table, F3\n"
              "events (docs/science.md symbols):\n# (docs/science.md S2, Zhu & Rosenbaum 2024)\n")
    assert cited_sections(sample) == {"S1", "S2", "S3", "S4", "S5", "Meta-learning protocol", "Data", "table",
                                      "symbols"}


def test_every_cited_science_section_has_a_heading() -> None:
    headings = _headings(SCIENCE.read_text(encoding="utf-8"))
    cited: dict[str, list[str]] = {}
    for path in _repo_files({".py", ".md"}):
        if path == Path(__file__).resolve():
            continue
        for label in cited_sections(path.read_text(encoding="utf-8", errors="replace")):
            cited.setdefault(label, []).append(str(path.relative_to(ROOT)))
    missing = {label: files for label, files in cited.items() if not _heading_has(headings, label)}
    assert not missing, f"docs/science.md lacks a heading for: {missing}"


@pytest.mark.parametrize("label", ["S1", "S2", "S3", "S4", "S5", "Data", "Meta-learning protocol", "symbols",
                                   "table"])
def test_science_has_the_sections_the_code_relies_on(label: str) -> None:
    assert _heading_has(_headings(SCIENCE.read_text(encoding="utf-8")), label)


# --- (c) the README is a short front door --------------------------------------------------------------------------

def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    data = README.read_bytes()
    assert len(data) <= 12_000, f"README.md is {len(data)} bytes; move detail into docs/"
    head = "\n".join(data.decode("utf-8").splitlines()[:40])
    assert "make run" in head and "make test" in head


# --- (d) the architecture's two paths list at most 10 existing files ------------------------------------------------

def _numbered_list_under(markdown: str, heading: str) -> list[str]:
    lines = markdown.splitlines()
    assert heading in lines, f"docs/architecture.md has no heading {heading!r}"
    start = lines.index(heading)
    items = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        match = re.match(r"^\d+\.\s+`([^`]+)`", line)
        if match:
            items.append(match.group(1))
    return items


@pytest.mark.parametrize("heading", ["## One discovery job's path", "## One benchmark's path"])
def test_architecture_paths_are_short_and_exist(heading: str) -> None:
    items = _numbered_list_under(ARCHITECTURE.read_text(encoding="utf-8"), heading)
    assert 1 <= len(items) <= 10, f"{heading}: {len(items)} items"
    missing = [item for item in items if not (ROOT / item).exists()]
    assert not missing, f"{heading}: these files do not exist: {missing}"


# --- (e) relative links resolve -------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


@pytest.mark.parametrize("doc", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    broken = [t for t in _relative_links(doc) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"
