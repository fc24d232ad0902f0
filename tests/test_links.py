"""Every pointer to the documentation resolves: the file exists and so does the section it names.

Checked: markdown links to local files in README.md and docs/*.md (`[x](docs/store.md#versions)`,
`[x](store.md)`, `[x](#layout)`), and textual pointers in the code, docstrings and help text of
core/, jobs/, dashboard/, benchmarks/, tests/ and the prose of README and docs/: a path with an
anchor (`docs/store.md#versions`), a path alone (`docs/sweep.md`), and a path or README followed by
the section's name in quotes or italics (`docs/sweep.md, "Presets"`, `docs/metrics.md, 'Scores'`,
`docs/metrics.md (*Failure modes*)`, `README's "Layout"`, `README.md "Layout"`). A section name
resolves when its GitHub anchor is a heading's: lowercase, spaces to '-', punctuation other than
'-' and '_' dropped.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_DIRS = ("core", "jobs", "dashboard", "benchmarks", "tests")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FILE = r"(?P<file>\bREADME(?:\.md)?|\bdocs/[\w-]+\.md)"
QUOTED = r"\"(?P<double>[^\"]{1,150})\"|'(?P<single>[^'\n]{1,150})'|\*(?P<italic>[^*]{1,150})\*"
POINTER = re.compile(FILE + r"(?:#(?P<anchor>[\w-]+)|(?:'s)?(?:,\s*|\s*\(\s*|\s+)(?:" + QUOTED + r"))?")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading or a section's name (markup dropped, as GitHub renders it)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"[`*]", "", " ".join(text.split())).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(doc: Path) -> frozenset[str]:
    """The anchors of a markdown file's headings (fenced code skipped; repeats get GitHub's -1, -2...)."""
    found: list[str] = []
    fenced = False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            a = anchor(m.group(1))
            found.append(a if a not in found else f"{a}-{found.count(a)}")
    return frozenset(found)


def section(m: re.Match[str]) -> str | None:
    """A pointer's section: its name as written, or None (the file as a whole)."""
    return m["double"] or m["single"] or m["italic"]


def resolve(target: Path, wanted: str | None, where: str, named: str | None = None) -> list[str]:
    """What is wrong with a pointer to `target` and its section (`wanted`, an anchor; `named`, as written)."""
    if not target.is_file():
        return [f"{where}: {target.relative_to(REPO)} does not exist"]
    if wanted is None or target.suffix != ".md" or wanted in anchors(target):
        return []
    return [f"{where}: {target.relative_to(REPO)} has no section " + (f"{named!r} (#{wanted})" if named else f"#{wanted}")]


def links(doc: Path) -> list[str]:
    """Problems with the local links of a markdown file (relative to the file, as GitHub reads them)."""
    problems = []
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        for m in LINK.finditer(line):
            url = m.group(1)
            if re.match(r"[a-z]+:", url):  # http(s), mailto: not ours to check
                continue
            path, _, frag = url.partition("#")
            problems += resolve((doc.parent / path).resolve() if path else doc, frag or None,
                                f"{doc.relative_to(REPO)}:{n}")
    return problems


def pointers(path: Path) -> list[str]:
    """Problems with the textual pointers of a file (paths relative to the repository root)."""
    text = path.read_text()
    problems = []
    for m in POINTER.finditer(text):
        file = m["file"] if m["file"].endswith(".md") else "README.md"
        line = text.count("\n", 0, m.start()) + 1
        named = section(m)
        wanted = m["anchor"] or (anchor(named) if named else None)
        problems += resolve(REPO / file, wanted, f"{path.relative_to(REPO)}:{line}", named)
    return problems


def code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py") if p != Path(__file__).resolve())


def test_the_anchor_rule_is_githubs() -> None:
    assert anchor("1. Successive halving with promotion (`--pruner asha`, the default)") == \
        "1-successive-halving-with-promotion---pruner-asha-the-default"
    assert anchor("Ensembles past a single network's ceiling") == "ensembles-past-a-single-networks-ceiling"
    assert anchor("### `truth_masks` (v4): the truth as scored".lstrip("# ")) == "truth_masks-v4-the-truth-as-scored"


def test_the_pointer_forms_in_use_are_found_and_a_wrong_section_or_file_is_named() -> None:
    found = [(m["file"], m["anchor"] or section(m)) for m in POINTER.finditer(
        "see docs/sweep.md, \"Presets\"; docs/metrics.md, 'Scores'; docs/metrics.md (*Failure modes*);\n"
        "README's \"The dashboard\"; docs/store.md#versions; docs/store.md) and README's install; (docs/sweep.md,\n"
        "    \"Short refits start from the search's weights\")")]
    assert found == [("docs/sweep.md", "Presets"), ("docs/metrics.md", "Scores"), ("docs/metrics.md", "Failure modes"),
                     ("README", "The dashboard"), ("docs/store.md", "versions"), ("docs/store.md", None),
                     ("README", None), ("docs/sweep.md", "Short refits start from the search's weights")]
    assert resolve(REPO / "docs/sweep.md", "no-such-part", "x.py:1", "No such part") == [
        "x.py:1: docs/sweep.md has no section 'No such part' (#no-such-part)"]
    assert resolve(REPO / "docs/sweep.md", "presets", "x.py:1", "Presets") == []
    assert resolve(REPO / "docs/no-such.md", None, "x.py:1") == ["x.py:1: docs/no-such.md does not exist"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_link_and_pointer_in_the_docs_resolves(doc: Path) -> None:
    assert links(doc) + pointers(doc) == []


def test_every_pointer_in_code_docstrings_and_help_text_resolves() -> None:
    assert [problem for path in code_files() for problem in pointers(path)] == []


def test_the_readme_stays_at_most_300_lines() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 300  # the rest belongs in docs/, linked from it
