"""The docs point only at what the repository holds: every relative link in README.md and
docs/*.md names an existing file, nothing sends a reader to a design note outside the
repository (DESIGN.md), and every pointer from the code to a section of
benchmarks/RESULTS.md names a section that is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def relative_links(text: str) -> list[str]:
    """The targets of ``[text](target)`` links that are paths, without their #anchor."""
    found = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:, or an anchor on the same page
        found.append(target.split("#", 1)[0])
    return found


def test_relative_links_are_found() -> None:
    text = "[a](docs/a.md) [b](https://x.org/b.md) [c](#c) [d](../d.md#part) [e](e.md 'title')"
    assert relative_links(text) == ["docs/a.md", "../d.md", "e.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_relative_link_names_a_file_in_the_repository(doc: Path) -> None:
    missing = [
        target
        for target in relative_links(doc.read_text(encoding="utf-8"))
        if not (doc.parent / target).exists()
    ]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing {missing}"


def test_the_architecture_and_reliability_docs_are_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/architecture.md", "docs/reliability.md"):
        assert (ROOT / doc).is_file(), doc
        assert doc in readme, f"README.md does not point at {doc}"


def test_nothing_points_at_a_design_note_outside_the_repository() -> None:
    sources = [ROOT / "README.md", *sorted((ROOT / "pipeline").rglob("*.py"))]
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "DESIGN.md" in line or "DESIGN contract" in line
    ]
    assert not stale, f"these point at DESIGN.md, which is not in the repository: {stale}"


RESULTS_POINTER = re.compile(r'benchmarks/RESULTS\.md,\s+section\s+"([^"]+)"')


def test_every_pointer_into_results_names_a_section() -> None:
    headings = [
        line.removeprefix("### ")
        for line in (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("### ")
    ]
    pointers = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in sorted((ROOT / "pipeline").rglob("*.py"))
        for name in RESULTS_POINTER.findall(path.read_text(encoding="utf-8"))
    }
    assert pointers, "no pointer found: the pattern no longer matches how the code cites"
    dangling = sorted(
        (path, name)
        for path, name in pointers
        if not any(heading.startswith(f"{name} ") for heading in headings)
    )
    assert not dangling, f"no section of benchmarks/RESULTS.md starts with these: {dangling}"


def listed_modules(block: str) -> set[str]:
    """The module paths the tree drawing in docs/architecture.md names: files on a line
    under a ``room/`` heading belong to that room; two-space lines are top level."""
    found: set[str] = set()
    room = ""
    for line in block.splitlines():
        heading = re.match(r"  (\w+)/", line)
        if heading:
            room = heading.group(1) + "/"
            continue
        if re.match(r"  \S", line):
            room = ""
        for name in re.findall(r"\b(\w+\.py)\b", line.split("  #")[0]):
            found.add(room + name)
    return found


def test_the_tree_drawing_names_modules_by_room() -> None:
    block = "  __init__.py  x\n  spec/   y\n    load.py a\n    b.py c.py\n  cli.py z\n"
    assert listed_modules(block) == {
        "__init__.py",
        "spec/load.py",
        "spec/b.py",
        "spec/c.py",
        "cli.py",
    }


def test_the_package_matches_the_tree_in_architecture_md() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("## The rooms", 1)[1].split("```", 2)[1]
    package = ROOT / "pipeline"
    real = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or path.parent == package
    }
    real = {name for name in real if not name.startswith("emulators/")}
    listed = listed_modules(block)
    assert not real - listed, f"modules missing from docs/architecture.md: {sorted(real - listed)}"
    assert not listed - real, (
        f"docs/architecture.md names modules that are gone: {sorted(listed - real)}"
    )
