"""A run whose manifest is in PostgreSQL (``manifest:`` / ``run --manifest URL``): the
same commands, on real HTTP emulators and a real throwaway PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from tests.conftest import run_cli, write_spec

SPEC = """
name: shared
output:
  root: out
providers:
  pixellabs:
    emulate: {task_seconds: 0.2}
    concurrency: 3
  apixo:
    emulate: {task_seconds: 0.2}
    concurrency: 3
    params: {model: nano-banana}
    options: {completion: webhook}
prompts:
  - a lighthouse
  - a cat
seeds: [1, 2, 3]
"""


def with_password(url: str, password: str) -> str:
    """The same URL with a password (the throwaway server trusts any)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def test_a_run_in_postgresql_is_read_by_every_command(pg_url: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    url = with_password(pg_url, "hunter2-not-secret")
    run = run_cli("run", str(spec), "--manifest", url, "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "done 12/12" in run.stdout
    out = tmp_path / "out"
    assert not (out / "manifest.sqlite").exists()  # the manifest is in the database
    pointer = json.loads((out / "manifest.url").read_text())
    assert pointer["run"] == "shared" and pointer["schema"] == "pipeline_shared"
    assert "hunter2" not in (out / "manifest.url").read_text()
    # A folder's readers follow the pointer; PGPASSWORD is how a reader gives the password.
    env = {"PGPASSWORD": "hunter2-not-secret"}
    status = run_cli("status", str(out), "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["jobs"] == 12 and "hunter2" not in status.stdout
    export = run_cli("export", str(out), "--format", "csv", "-o", "rows.csv", cwd=tmp_path, env=env)
    assert export.returncode == 0, export.stderr
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 13
    log = run_cli("log", str(out), cwd=tmp_path, env=env)
    assert log.returncode == 0 and "→ done" in log.stdout, log.stderr
    sheet = run_cli("report", str(out), cwd=tmp_path, env=env)
    assert sheet.returncode == 0, sheet.stderr
    assert (out / "report.html").is_file()
    # A second run with the same spec and URL resumes: nothing is submitted again.
    again = run_cli("run", str(spec), "--manifest", url, "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "all 12 jobs were already done — nothing submitted" in again.stdout


def test_manifest_in_the_spec(pg_url: str, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC + f"manifest: {pg_url}\n")
    run = run_cli("run", str(spec), "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    status = run_cli("status", str(spec), "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["jobs"] == 12, status.stderr


def test_a_manifest_that_is_not_a_database_url_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC + "manifest: out/manifest.sqlite\n")
    bad = run_cli("validate", str(spec), cwd=tmp_path)
    assert bad.returncode == 2
    assert "spec.yaml:17: manifest: expected a PostgreSQL URL" in bad.stderr
    flag = run_cli("run", str(write_spec(tmp_path, SPEC, "ok.yaml")), "--manifest", "x.db",
                   cwd=tmp_path)  # fmt: skip
    assert flag.returncode == 2 and "--manifest must be a PostgreSQL URL" in flag.stderr
    assert "Traceback" not in bad.stderr + flag.stderr


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC)
    run = run_cli("run", str(spec), "--manifest", "postgresql://u:pw-zz@127.0.0.1:9/db",
                  cwd=tmp_path)  # fmt: skip
    assert run.returncode != 0
    assert "cannot reach the manifest database postgresql://u:***@127.0.0.1:9/db" in run.stderr
    assert "pw-zz" not in run.stderr and "Traceback" not in run.stderr


def test_runners_with_their_own_output_roots(pg_url: str, tmp_path: Path) -> None:
    """A runner with its own --out records where its files are: export and report from
    another runner's folder find every file."""
    spec = write_spec(tmp_path, SPEC.replace("  - a cat\n", ""))
    first = run_cli("run", str(spec), "--manifest", pg_url, "--out", "a", "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    spec = write_spec(tmp_path, SPEC)  # one more prompt: its jobs go to the second runner
    second = run_cli("run", str(spec), "--manifest", pg_url, "--out", "b", "-q", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "submitted this run: 6" in second.stdout
    hf = run_cli("export", "b", "--format", "hf", "-o", "ds", cwd=tmp_path)
    assert hf.returncode == 0, hf.stderr + hf.stdout
    listed = [json.loads(line) for line in (tmp_path / "ds" / "all.jsonl").read_text().splitlines()]
    assert len(listed) == 12
    for row in listed:
        assert (tmp_path / "ds" / row["file_name"]).is_file(), row["file_name"]
    csv = run_cli("export", "b", "--format", "csv", "-o", "rows.csv", cwd=tmp_path)
    assert csv.returncode == 0, csv.stderr
    lines = (tmp_path / "rows.csv").read_text().splitlines()
    assert sum(str(tmp_path / "a") in line for line in lines) == 6  # absolute: under a/
    sheet = run_cli("report", "b", cwd=tmp_path)
    assert sheet.returncode == 0, sheet.stderr
    page = (tmp_path / "b" / "report.html").read_text()
    sources = re.findall(r'src="([^"]+\.png)"', page)
    assert len(sources) == 12, sources
    for source in sources:
        assert (tmp_path / "b" / unquote(source)).resolve().is_file(), source


def test_recover_says_a_shared_runs_manifest_is_not_its_business(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.url").write_text('{"url": "postgresql://h/db", "run": "x"}\n')
    recover = run_cli("recover", str(out), cwd=tmp_path)
    assert recover.returncode == 1, recover.stderr
    assert "manifest is in PostgreSQL" in recover.stderr and "Traceback" not in recover.stderr


def test_status_names_the_runners_at_work(pg_url: str, tmp_path: Path) -> None:
    import os

    from pipeline.manifest import PgManifest, Runners

    spec = write_spec(tmp_path, SPEC + f"manifest: {pg_url}\n")
    assert run_cli("run", str(spec), "-q", cwd=tmp_path).returncode == 0
    with PgManifest.open_url(pg_url, run="shared", root=tmp_path / "out") as manifest:
        runners = Runners(manifest)
        runners.join(60.0)
        status = run_cli("status", str(spec), cwd=tmp_path)
        report = json.loads(run_cli("status", str(spec), "--json", cwd=tmp_path).stdout)
        runners.leave()
        after = run_cli("status", str(spec), cwd=tmp_path)
    assert f"1 runner(s) at work: pid {os.getpid()} on" in status.stdout, status.stdout
    assert report["runners"][0]["pid"] == os.getpid()
    assert 0 < report["runners"][0]["lease_left"] <= 60
    assert "at work" not in after.stdout
