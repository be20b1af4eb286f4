"""One rule for the output root in every command (issue 13, item 6): a relative
``output.root`` or ``--out`` is relative to the current directory; ``${SPEC_DIR}`` in the
spec is the spec file's folder. ``run``, ``status``, ``plan`` and ``cancel`` agree,
whatever directory they are started from."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_cli, write_spec


def spec_in(folder: Path, root: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_spec(
        folder,
        f"""
        name: roots
        output: {{root: "{root}"}}
        providers:
          pixellabs: {{emulate: {{task_seconds: 0.05, render: false}}, concurrency: 2}}
        prompts: [a lighthouse at dusk, a paper boat]
        seeds: [1]
        run: {{poll: {{initial: 0.05s, max: 0.1s}}}}
        """,
    )


def jobs_seen(spec: Path, cwd: Path, *extra: str) -> int:
    status = run_cli("status", str(spec), "--json", *extra, cwd=cwd)
    assert status.returncode == 0, status.stderr
    return int(json.loads(status.stdout)["jobs"])


def planned_root(plan: str) -> Path:
    return Path(plan.splitlines()[0].rpartition("→ ")[2]).resolve()


def test_relative_root_is_relative_to_where_each_command_runs(tmp_path):
    spec = spec_in(tmp_path / "specs", "out/roots")
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    ran = run_cli("run", str(spec), "--quiet", cwd=here)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (here / "out/roots/manifest.sqlite").is_file()
    assert not (tmp_path / "specs/out").exists()
    assert jobs_seen(spec, here) == 2
    # From another folder the same relative root names another (empty) place; --out,
    # relative to that folder too, points back at the run's.
    assert run_cli("status", str(spec), cwd=elsewhere).returncode == 1
    assert jobs_seen(spec, elsewhere, "--out", "../here/out/roots") == 2
    plan = run_cli("plan", str(spec), "--out", "../here/out/roots", cwd=elsewhere)
    assert plan.returncode == 0, plan.stderr
    assert planned_root(plan.stdout) == (here / "out/roots").resolve()
    cancel = run_cli("cancel", str(spec), "--out", "../here/out/roots", cwd=elsewhere)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 0 job(s)" in cancel.stdout
    by_folder = run_cli("cancel", "../here/out/roots", cwd=elsewhere)  # its recorded spec
    assert by_folder.returncode == 0, by_folder.stderr
    assert "cancelled 0 job(s)" in by_folder.stdout


def test_spec_dir_ties_the_root_to_the_spec_file(tmp_path):
    spec = spec_in(tmp_path / "specs", "${SPEC_DIR}/out")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    ran = run_cli("run", str(spec), "--quiet", cwd=one)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (tmp_path / "specs/out/manifest.sqlite").is_file()
    assert jobs_seen(spec, two) == 2
    plan = run_cli("plan", str(spec), cwd=two)
    assert planned_root(plan.stdout) == (tmp_path / "specs/out").resolve()


def test_out_goes_with_a_spec_file_only(tmp_path):
    spec = spec_in(tmp_path, "out")
    assert run_cli("run", str(spec), "--quiet", cwd=tmp_path).returncode == 0
    refused = run_cli("status", str(tmp_path / "out"), "--out", "x", cwd=tmp_path)
    assert refused.returncode == 2 and "--out goes with a spec file" in refused.stderr
