"""The import contract from DESIGN.md: the pure core does no I/O and imports no
anyio/httpx/sqlite; adapters never touch the manifest, files or progress; nothing
imports the CLI; each third-party library lives in its own room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

PURE_CORE = ["errors", "redact", "models", "identity", "matrix", "prompts", "units", "spec/*"]
IO_LIBRARIES = {"anyio", "httpx", "sqlite3", "aiohttp", "aiofiles", "tqdm", "httpx_aiohttp"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


@pytest.mark.parametrize("name", PURE_CORE)
def test_pure_core_imports_no_io_library(name: str) -> None:
    paths = list(PACKAGE.glob(name if name.endswith("*") else f"{name}.py"))
    assert paths, name
    for path in paths:
        bad = {top(m) for m in imports_of(path)} & IO_LIBRARIES
        assert not bad, f"{path.name} imports {bad}"


def test_adapters_never_touch_manifest_files_or_progress() -> None:
    forbidden = {
        "pipeline.manifest.store",
        "pipeline.outputs.download",
        "pipeline.runner.progress",
        "pipeline.runner.scheduler",
        "sqlite3",
        "aiofiles",
        "tqdm",
    }
    for path in (PACKAGE / "providers").glob("*.py"):
        bad = imports_of(path) & forbidden
        assert not bad, f"{path.name} imports {bad}"


def test_nothing_imports_the_cli() -> None:
    for path in modules():
        if path.name in {"cli.py", "__main__.py"}:
            continue
        assert "pipeline.cli" not in imports_of(path), path


@pytest.mark.parametrize(
    ("library", "home"),
    [
        ("yaml", "spec/source.py"),
        ("sqlite3", "manifest/*.py"),
        ("tqdm", "runner/progress.py"),
    ],
)
def test_each_library_lives_in_its_room(library: str, home: str) -> None:
    allowed = set(PACKAGE.glob(home))
    for path in modules():
        if "emulators" in path.parts or path in allowed:
            continue
        assert library not in {top(m) for m in imports_of(path)}, f"{path} imports {library}"


def test_emulators_are_a_separate_world() -> None:
    for path in (PACKAGE / "emulators").rglob("*.py"):
        ours = {m for m in imports_of(path) if m.startswith("pipeline")}
        assert ours <= {m for m in ours if m.startswith("pipeline.emulators")} | {
            "pipeline.errors"
        }, f"{path.name} imports {ours}"
