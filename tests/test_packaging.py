"""The distribution (issue 13, item 5): a free PyPI name, the `pipeline` command and import
package kept; the wheel ships the JSON Schema and the starter spec; `pipeline init` writes
a spec that validates and plans with no key set, and never overwrites; `pipeline schema`
prints the shipped schema; every shipped spec points editors at the schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from .conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
DIST = "genmedia-pipeline"
SCHEMA_LINE = "# yaml-language-server: $schema="


def test_distribution_name_everywhere() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == DIST
    assert project["scripts"] == {"pipeline": "pipeline.cli:main"}
    plugin = tomllib.loads((REPO / "examples/plugin/pyproject.toml").read_text(encoding="utf-8"))
    assert plugin["project"]["dependencies"] == [DIST]
    stale = [
        str(path.relative_to(REPO))
        for path in [REPO / "README.md", *sorted((REPO / "pipeline").rglob("*.py"))]
        if "pip install 'pipeline[" in path.read_text(encoding="utf-8")
    ]
    assert not stale, f"install hints naming the wrong distribution: {stale}"


@pytest.mark.slow
def test_wheel_ships_the_schema_and_the_starter_spec(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building in place would leave build/ in the repo
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pipeline", source / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("genmedia_pipeline-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"pipeline/schema.json", "pipeline/starter.yaml", "pipeline/py.typed"} <= names
        shipped = json.loads(archive.read("pipeline/schema.json"))
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "pipeline = pipeline.cli:main" in archive.read(entry_points).decode()
    assert shipped == json.loads((REPO / "pipeline/schema.json").read_text(encoding="utf-8"))


def test_init_writes_a_starter_that_plans_without_keys_and_never_overwrites(
    tmp_path: Path,
) -> None:
    env = {"PIXELLABS_API_KEY": ""}
    wrote = run_cli("init", cwd=tmp_path, env=env)
    assert wrote.returncode == 0, wrote.stderr
    spec = tmp_path / "spec.yaml"
    text = spec.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith(SCHEMA_LINE)
    schema = Path(unquote(urlparse(first.removeprefix(SCHEMA_LINE)).path))
    printed = run_cli("schema", cwd=tmp_path)
    assert json.loads(printed.stdout) == json.loads(schema.read_text(encoding="utf-8"))
    assert run_cli("validate", "spec.yaml", cwd=tmp_path, env=env).returncode == 0
    plan = run_cli("plan", "spec.yaml", cwd=tmp_path, env=env)
    assert plan.returncode == 0 and "via built-in emulator" in plan.stdout, plan.stderr

    again = run_cli("init", "spec.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert spec.read_text(encoding="utf-8") == text
    (tmp_path / "sub").mkdir()
    assert run_cli("init", "sub", cwd=tmp_path).returncode == 0
    assert (tmp_path / "sub/spec.yaml").is_file()


@pytest.mark.parametrize("spec", sorted((REPO / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_point_editors_at_the_schema(spec: Path) -> None:
    first = spec.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(SCHEMA_LINE), first
    assert (spec.parent / first.removeprefix(SCHEMA_LINE)).resolve() == (
        REPO / "pipeline/schema.json"
    )
