"""`pipeline manifest copy SRC DST`: a run moved between SQLite and PostgreSQL keeps every
job row, output, event and meta entry, so status, export and log read the same on both
sides; an interrupted copy never looks like a run; a source being written is refused."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import pytest

from pipeline.commands import status_report
from pipeline.errors import ManifestError, RunLocked, UsageError
from pipeline.manifest import Event, Manifest, copy_manifest, hold_run_lock
from pipeline.manifest.postgres import PgManifest, schema_name
from pipeline.models import Job, JobState, Output

from .conftest import FAKE_KEY, run_cli, write_spec

S = JobState
SKIPPED_META = {"schema_version", "created_at", "copied_from"}


def make_job(i: int) -> Job:
    return Job(
        id=f"job-{i:04d}",
        provider="pa" if i % 2 else "pb",
        model="m1" if i % 3 else None,
        params={"prompt": f"a cat {i}", "seed": i},
        replicate=i % 2,
        prompt_slug=f"a-cat-{i}",
        meta={"animal": "cat", "n": i},
    )


def clock() -> Iterator[float]:
    t = 1_700_000_000.125
    while True:
        t += 0.5
        yield t


def build_run(root: Path, jobs: int = 13) -> Manifest:
    """A manifest with jobs in most states, outputs, errors, two generations and meta."""
    ticks = clock()
    manifest = Manifest.open(root, spec_name="cats", spec_path="/specs/cats.yaml",
                             clock=lambda: next(ticks))  # fmt: skip
    manifest.begin_generation()
    manifest.add_jobs(make_job(i) for i in range(jobs - 2))
    manifest.set_meta("expansion", f"{manifest.generation}:abc123")
    manifest.begin_generation()  # jobs of the first listing only are "not in the spec"
    manifest.add_jobs(make_job(i) for i in range(2, jobs))
    manifest.set_meta("expansion", f"{manifest.generation}:def456")

    def walk(job: int, *steps: JobState, client_ref: str | None = None) -> None:
        expect = S.PENDING
        for step in steps:
            fields = {
                S.SUBMITTING: {"client_ref": client_ref},
                S.SUBMITTED: {"remote_id": f"r-{job}"},
            }.get(step, {})
            assert manifest.transition(f"job-{job:04d}", step, expect=expect, **fields)
            expect = step

    walk(2, S.SUBMITTING, client_ref="ref-2")
    walk(3, S.SUBMITTING, S.SUBMITTED, S.RUNNING, S.SUCCEEDED, S.DOWNLOADING,
         client_ref="ref-3")  # fmt: skip
    manifest.finish(
        "job-0003",
        [Output("job-0003", i, f"pa/{i}.png", 100 + i, f"{i:064x}", f"https://h/{i}", "image/png")
         for i in range(2)],
    )  # fmt: skip
    walk(4, S.SUBMITTING, S.SUBMITTED, client_ref="ref-4")
    manifest.transition("job-0004", S.FAILED, expect=S.SUBMITTED, error="remote: boom",
                        failure="remote")  # fmt: skip
    walk(5, S.CANCELLED)
    walk(6, S.SUBMITTING, S.UNKNOWN, client_ref="ref-6")
    manifest.record_error("job-0007", "a note, no state change")
    manifest.log_event("job-0008", "retry", "429: waiting 2 s")
    return manifest


def all_rows(manifest: Manifest) -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every job (rowid order, rowid itself left out), output and event
    (id order, id left out), read through the store's own connection."""
    with manifest._read("test") as conn:
        return {
            "jobs": [tuple(r) for r in conn.execute(
                "SELECT id, provider, model, params, replicate, prompt_slug, state, remote_id, "
                "client_ref, attempts, error, created_at, updated_at, submitted_at, "
                "finished_at, generation, failure, meta FROM jobs ORDER BY rowid")],
            "outputs": [tuple(r) for r in conn.execute(
                "SELECT job_id, idx, path, size, sha256, url, content_type FROM outputs "
                "ORDER BY job_id, idx")],
            "events": [tuple(r) for r in conn.execute(
                "SELECT job_id, at, kind, from_state, to_state, detail FROM events ORDER BY id")],
        }  # fmt: skip


def no_id(event: Event) -> Event:
    return dataclasses.replace(event, id=0)


def exported(manifest: Manifest, *, root: str | None = None) -> list[str]:
    """The JSONL export's lines; with ``root``, as a folder whose outputs lie under
    ``root`` would write them."""
    out = io.StringIO()
    manifest.export_jsonl(out)
    lines = out.getvalue().splitlines()
    if root is None:
        return lines
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        for output in obj["outputs"]:
            output["root"] = root
    return [json.dumps(obj, ensure_ascii=False) for obj in objects]


def kept_meta(manifest: Manifest) -> dict[str, str]:
    return {k: v for k, v in manifest.meta().items() if k not in SKIPPED_META}


def open_pg(url: str, run: str, root: Path) -> PgManifest:
    return PgManifest.open_url(url, run=run, root=root, readonly=True)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- what is copied ------------------------------------------------------------------------


def test_a_round_trip_through_postgres_keeps_every_row_event_and_meta_entry(
    pg_url: str, tmp_path: Path
) -> None:
    source = build_run(tmp_path / "src")
    source.transition("job-0002", S.SUBMITTED, expect=S.SUBMITTING, remote_id="r-2")
    source.close()
    to_pg = copy_manifest(tmp_path / "src", pg_url, page=3)  # pages cut through everything
    assert (to_pg.jobs, to_pg.outputs, to_pg.unknown) == (13, 2, 0)
    assert "pipeline_cats" in to_pg.dest
    back = copy_manifest(pg_url, tmp_path / "back", run="cats", page=4)
    assert (back.jobs, back.events) == (to_pg.jobs, to_pg.events)

    with (
        Manifest.open(tmp_path / "src", readonly=True) as src,
        open_pg(pg_url, "cats", tmp_path / "src") as pg,
        Manifest.open(tmp_path / "back", readonly=True) as dst,
    ):
        for copy in (pg, dst):
            assert all_rows(copy) == all_rows(src)
            # the files stay under src: the folder back points there, and says so
            elsewhere = None if copy is pg else str((tmp_path / "src").resolve())
            assert exported(copy) == exported(src, root=elsewhere)
            assert kept_meta(copy) == kept_meta(src)
            assert copy.generation == src.generation
            for job in ("job-0000", "job-0003", "job-0004", "job-0008"):
                assert [no_id(e) for e in copy.events(job)] == [no_id(e) for e in src.events(job)]
            assert [no_id(e) for e in copy.last_events(50)] == [
                no_id(e) for e in src.last_events(50)
            ]
            report, expected = status_report(copy), status_report(src)
            report.pop("manifest"), expected.pop("manifest")
            assert report == expected
            assert report["not_in_spec"], "the first listing's jobs stay apart"
        assert pg.meta()["copied_from"] == src.location
        assert dst.meta()["copied_from"] == pg.location


def test_a_job_caught_submitting_is_copied_as_unknown(pg_url: str, tmp_path: Path) -> None:
    build_run(tmp_path / "src").close()  # job-0002 is submitting
    done = copy_manifest(tmp_path / "src", pg_url)
    assert done.unknown == 1
    with open_pg(pg_url, "cats", tmp_path) as pg:
        record = pg.get("job-0002")
        assert record is not None and record.state is S.UNKNOWN
        assert record.client_ref == "ref-2" and record.attempts == 1
        assert record.error is not None and "submit" in record.error
        last = pg.events("job-0002")[-1]
        assert (last.kind, last.from_state, last.to_state) == (
            "transition",
            S.SUBMITTING,
            S.UNKNOWN,
        )
        assert pg.counts()["pb"].get("submitting") is None
    with Manifest.open(tmp_path / "src", readonly=True) as src:  # the source is left alone
        record = src.get("job-0002")
        assert record is not None and record.state is S.SUBMITTING


def test_sqlite_to_sqlite_and_postgres_to_another_run(pg_url: str, tmp_path: Path) -> None:
    build_run(tmp_path / "src").close()
    copy_manifest(tmp_path / "src", tmp_path / "copy")
    copy_manifest(tmp_path / "copy", pg_url, run="first")
    copy_manifest(pg_url, pg_url, run="first", to_run="second", page=2)
    with (
        Manifest.open(tmp_path / "copy", readonly=True) as copy,
        open_pg(pg_url, "first", tmp_path) as first,
        open_pg(pg_url, "second", tmp_path) as second,
    ):
        assert exported(first) == exported(copy) == exported(second)
        assert all_rows(first) == all_rows(second)
        assert copy.counts()["pb"]["unknown"] == 2  # job-0002 and job-0006


# -- refusals ------------------------------------------------------------------------------


def test_a_destination_that_holds_a_run_is_refused(pg_url: str, tmp_path: Path) -> None:
    build_run(tmp_path / "src").close()
    copy_manifest(tmp_path / "src", pg_url)
    with pytest.raises(UsageError, match=r"pipeline_cats.*already holds a run.*--run"):
        copy_manifest(tmp_path / "src", pg_url)
    copy_manifest(tmp_path / "src", tmp_path / "dst")
    with pytest.raises(UsageError, match=r"already holds a run"):
        copy_manifest(pg_url, tmp_path / "dst", run="cats")
    with pytest.raises(UsageError, match="same"):
        copy_manifest(tmp_path / "src", tmp_path / "src" / "manifest.sqlite")


def test_a_source_being_written_is_refused(pg_url: str, tmp_path: Path) -> None:
    build_run(tmp_path / "src").close()
    with hold_run_lock(tmp_path / "src"), pytest.raises(RunLocked, match="in use"):
        copy_manifest(tmp_path / "src", pg_url)
    copy_manifest(tmp_path / "src", pg_url)  # a runners table with a live row refuses
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a live runner (its lease holds)
        conn.execute(
            f"INSERT INTO {schema_name('cats')}.runners VALUES "
            "('r1', 'box-7', 4242, 0, extract(epoch FROM now()) + 600, '/out')"
        )
    with pytest.raises(ManifestError, match=r"runner.*box-7"):
        copy_manifest(pg_url, tmp_path / "dst", run="cats")
    assert not (tmp_path / "dst" / "manifest.sqlite").exists()


def test_the_run_name_of_a_database_side_must_be_known(pg_url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--run"):
        copy_manifest(pg_url, tmp_path / "dst")
    Manifest.open(tmp_path / "nameless").close()
    with pytest.raises(UsageError, match="--run"):
        copy_manifest(tmp_path / "nameless", pg_url)
    with pytest.raises(UsageError, match="no manifest"):
        copy_manifest(tmp_path / "missing", pg_url, run="x")
    with pytest.raises(UsageError, match="not a PostgreSQL URL"):
        copy_manifest(tmp_path / "missing", "mysql://h/db", run="x")


def test_an_interrupted_copy_never_looks_like_a_run(pg_url: str, tmp_path: Path) -> None:
    """The copy dies (SIGKILL) after its second page: neither destination holds a
    manifest, and the next copy starts over and completes."""
    build_run(tmp_path / "src").close()
    env = {"PIPELINE_FAILPOINTS": "copy.after_page:2"}
    for dest in (pg_url, str(tmp_path / "dst")):
        killed = run_cli("manifest", "copy", str(tmp_path / "src"), dest, "--run", "cats",
                         "--page", "2", cwd=tmp_path, env=env)  # fmt: skip
        assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "dst" / "manifest.sqlite.copying").exists(), "killed mid-copy"
    assert not (tmp_path / "dst" / "manifest.sqlite").exists()
    with pytest.raises(ManifestError, match="no manifest"):
        open_pg(pg_url, "cats", tmp_path)
    for dest in (pg_url, str(tmp_path / "dst")):
        again = run_cli("manifest", "copy", str(tmp_path / "src"), dest, "--page", "2",
                        cwd=tmp_path)  # fmt: skip
        assert again.returncode == 0, again.stderr
    with (
        open_pg(pg_url, "cats", tmp_path) as pg,
        Manifest.open(tmp_path / "dst", readonly=True) as dst,
    ):
        moved = [json.loads(line) for line in exported(pg)]
        for line in moved:
            if line["id"] == "job-0002":  # settled as unknown by each copy, at its own time
                line.pop("updated_at")
        same = [json.loads(line) for line in exported(dst)]
        same[2].pop("updated_at")
        assert moved == same and len(same) == 13
    assert not [p.name for p in (tmp_path / "dst").iterdir() if "copying" in p.name]
    with psycopg.connect(pg_url) as conn:
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pipeline%'")
        assert [row[0] for row in schemas] == ["pipeline_cats"]


# -- the command ---------------------------------------------------------------------------


def test_the_command_never_prints_a_password(pg_url: str, tmp_path: Path) -> None:
    build_run(tmp_path / "src").close()
    secret = with_password(pg_url, "s3cret-pw")  # the test server trusts loopback
    first = run_cli("manifest", "copy", str(tmp_path / "src"), secret, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "***" in first.stdout and "13 jobs" in first.stdout
    again = run_cli("manifest", "copy", str(tmp_path / "src"), secret, cwd=tmp_path)
    unreachable = run_cli("manifest", "copy", str(tmp_path / "src"),
                          "postgresql://me:s3cret-pw@127.0.0.1:1/db", cwd=tmp_path)  # fmt: skip
    missing = run_cli("manifest", "copy", str(tmp_path / "none"), secret, "--run", "x",
                      cwd=tmp_path)  # fmt: skip
    for refused in (again, unreachable, missing):
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
        assert "Traceback" not in refused.stderr
    for done in (first, again, unreachable, missing):
        assert "s3cret-pw" not in done.stdout + done.stderr
    assert "already holds a run" in again.stderr
    assert "cannot reach" in unreachable.stderr and "me:***@" in unreachable.stderr
    with (
        Manifest.open(tmp_path / "src", readonly=True) as src,
        open_pg(pg_url, "cats", tmp_path) as pg,
    ):
        assert "s3cret-pw" not in pg.meta()["copied_from"]
        assert pg.total() == src.total()


@pytest.mark.slow
def test_a_run_made_by_the_cli_reads_the_same_from_postgres(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(task_seconds=0.2)
    spec = write_spec(
        tmp_path,
        f"""
        name: quick
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {emulator.urls["pixellabs"]}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 4
        prompts:
          - text: "a {{animal}} on a roof"
            vars: {{animal: [cat, fox, owl]}}
        matrix:
          aspect_ratio: ["1:1", "4:3"]
        run:
          poll: {{initial: 0.1s, max: 0.3s}}
        """,
    )
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    ran = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    copied = run_cli("manifest", "copy", str(tmp_path / "out"), pg_url, cwd=tmp_path, env=env)
    assert copied.returncode == 0, copied.stderr
    assert "6 jobs" in copied.stdout and "pipeline_quick" in copied.stdout

    with (
        Manifest.open(tmp_path / "out", readonly=True) as src,
        open_pg(pg_url, "quick", tmp_path / "out") as pg,
    ):
        assert exported(pg) == exported(src)
        assert all_rows(pg) == all_rows(src)
        report, expected = status_report(pg), status_report(src)
        assert report.pop("manifest") != expected.pop("manifest")
        assert report == expected and report["states"] == {"done": 6}
        assert len(list(pg.iter_records(with_outputs=True))) == 6
        for record in pg.iter_records(with_outputs=True):
            assert [no_id(e) for e in pg.events(record.job.id)] == [
                no_id(e) for e in src.events(record.job.id)
            ]
            for output in record.outputs:
                assert (tmp_path / "out" / output.path).is_file()
    # and back: the folder's own `status` and `log` read the round trip as the original
    back = run_cli("manifest", "copy", pg_url, str(tmp_path / "back"), "--run", "quick",
                   cwd=tmp_path, env=env)  # fmt: skip
    assert back.returncode == 0, back.stderr
    elsewhere = f', "root": {json.dumps(str((tmp_path / "out").resolve()))}'
    for command in (["status"], ["log", "--last", "50"], ["export"]):
        a = run_cli(*command[:1], str(tmp_path / "out"), *command[1:], cwd=tmp_path, env=env)
        b = run_cli(*command[:1], str(tmp_path / "back"), *command[1:], cwd=tmp_path, env=env)
        assert a.returncode == b.returncode == 0, a.stderr + b.stderr
        if command == ["export"]:  # back's outputs are the files under out, and say so
            assert b.stdout.count(elsewhere) == 6
            b.stdout = b.stdout.replace(elsewhere, "")
        assert a.stdout.replace(str(tmp_path / "out"), "X") == b.stdout.replace(
            str(tmp_path / "back"), "X"
        ), command


def test_help_names_the_command() -> None:
    done = run_cli("manifest", "copy", "--help", cwd=Path.cwd())
    assert done.returncode == 0
    assert "--run" in done.stdout and "postgresql://" in done.stdout


# -- a shared run whose runners wrote under their own output roots -------------------------

SHARED = """
name: shared
output:
  root: out
providers:
  pixellabs:
    emulate: {task_seconds: 0.2}
    concurrency: 3
prompts:
  - a lighthouse
  - a cat
seeds: [1, 2, 3]
"""


def exported_files(folder: Path, cwd: Path) -> list[Path]:
    """Every file an ``hf`` export, a ``csv`` export and the contact sheet of ``folder``
    name, each checked to be there (the hf export: once per row)."""
    name = folder.name
    hf = run_cli("export", str(folder), "--format", "hf", "-o", f"ds-{name}", cwd=cwd)
    assert hf.returncode == 0, hf.stderr + hf.stdout
    assert "not on disk" not in hf.stdout, hf.stdout
    listing = (cwd / f"ds-{name}" / "all.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in listing]
    files = [cwd / f"ds-{name}" / row["file_name"] for row in rows]
    table = run_cli("export", str(folder), "--format", "csv", "-o", f"{name}.csv", cwd=cwd)
    assert table.returncode == 0, table.stderr
    with (cwd / f"{name}.csv").open(newline="") as file:
        listed = [row["file_name"] for row in csv.DictReader(file)]
    assert len(listed) == len(rows)
    files += [folder / path for path in listed]  # relative to the folder, or absolute
    sheet = run_cli("report", str(folder), cwd=cwd)
    assert sheet.returncode == 0, sheet.stderr
    sources = re.findall(r'src="([^"]+\.png)"', (folder / "report.html").read_text())
    assert len(sources) == len(rows), sources
    files += [(folder / unquote(source)).resolve() for source in sources]
    for path in files:
        assert path.is_file(), path
    return files


@pytest.mark.slow
def test_a_copy_of_a_shared_run_keeps_finding_the_files_of_every_runner(
    pg_url: str, tmp_path: Path
) -> None:
    """Two runners of one PostgreSQL run, each with its own --out: a copy to a folder
    (and on to another folder, and back to PostgreSQL) still finds every output file,
    and the files that are the destination folder's own are recorded as such."""
    one = write_spec(tmp_path, SHARED.replace("  - a cat\n", ""), "one.yaml")
    first = run_cli("run", str(one), "--manifest", pg_url, "--out", "a", "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    both = write_spec(tmp_path, SHARED, "both.yaml")
    second = run_cli("run", str(both), "--manifest", pg_url, "--out", "b", "-q", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "submitted this run: 3" in second.stdout

    copied = run_cli("manifest", "copy", pg_url, "copied", "--run", "shared", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert len(exported_files(tmp_path / "copied", tmp_path)) == 6 * 3
    files = sorted((tmp_path / "b").rglob("*"))
    for dest in ("b", str(tmp_path / "b" / "pixellabs"), "."):  # b's files are read too
        over = run_cli("export", "copied", "--format", "hf", "-o", dest, "--force", cwd=tmp_path)
        assert over.returncode == 2 and "overlaps the output folder" in over.stderr, over.stderr
    assert sorted((tmp_path / "b").rglob("*")) == files
    moved = run_cli("manifest", "copy", "copied", "moved", cwd=tmp_path)  # SQLite → SQLite
    assert moved.returncode == 0, moved.stderr
    assert len(exported_files(tmp_path / "moved", tmp_path)) == 6 * 3

    # into runner a's own folder: its files are the folder's own, b's stay under b
    home = run_cli("manifest", "copy", "moved", str(tmp_path / "a" / "manifest.sqlite"),
                   cwd=tmp_path)  # fmt: skip
    assert home.returncode == 0, home.stderr
    with Manifest.open(tmp_path / "a", readonly=True) as manifest:
        roots = Counter(
            output.root for r in manifest.iter_records(with_outputs=True) for output in r.outputs
        )
    assert roots == {None: 3, str((tmp_path / "b").resolve()): 3}
    assert len(exported_files(tmp_path / "a", tmp_path)) == 6 * 3
    # and from there to another folder: a's own files stay in a, and are found there
    onward = run_cli("manifest", "copy", "a", "onward", cwd=tmp_path)
    assert onward.returncode == 0, onward.stderr
    with Manifest.open(tmp_path / "onward", readonly=True) as manifest:
        roots = Counter(
            output.root for r in manifest.iter_records(with_outputs=True) for output in r.outputs
        )
    assert roots == {str((tmp_path / root).resolve()): 3 for root in "ab"}
    assert len(exported_files(tmp_path / "onward", tmp_path)) == 6 * 3

    back = run_cli("manifest", "copy", "moved", pg_url, "--run", "again", cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    with PgManifest.open_url(pg_url, run="again", root=tmp_path / "c", readonly=True) as pg:
        found = [
            Path(output.root or tmp_path / "c") / output.path
            for record in pg.iter_records(with_outputs=True)
            for output in record.outputs
        ]
    assert len(found) == 6 and all(path.is_file() for path in found), found

    # pruning from a's folder deletes a's own files only: b's are another runner's
    dog = write_spec(tmp_path, SHARED.replace("  - a lighthouse\n  - a cat\n", "  - a dog\n"),
                     "dog.yaml")  # fmt: skip
    before = {root: sorted((tmp_path / root).rglob("*.png")) for root in "ab"}
    assert [len(files) for files in before.values()] == [3, 3]
    pruned = run_cli("prune", str(dog), "--out", "a", "--adopt", "--delete-files", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 6 job(s) not in the spec; 3 output file(s) deleted" in pruned.stdout
    assert "3 of their output file(s) lie under other output roots" in pruned.stdout
    assert not list((tmp_path / "a").rglob("*.png"))
    assert all(path.is_file() for path in before["b"])
