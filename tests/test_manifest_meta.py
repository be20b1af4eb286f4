"""``jobs.meta`` (schema 4): a job's prompt metadata is stored, read back, exported,
recovered, and an older manifest gains the column (issue 12, item 1)."""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from pipeline.manifest.recover import recover
from pipeline.manifest.schema import SCHEMA_VERSION
from pipeline.manifest.store import DB_NAME, Manifest
from pipeline.models import JobState

from .test_manifest import make_job, make_jobs

META = {"id": 7, "category": "animals", "ok": True, "w": 0.5, "none": None, "ü": "ñ"}


def test_meta_round_trips_through_the_manifest_and_its_export(tmp_path: Path) -> None:
    job = replace(make_job(1), meta=META)
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job, make_job(2)])
        assert manifest.get(job.id).job == job  # type: ignore[union-attr]
        records = list(manifest.iter_records())
        assert [r.job.meta for r in records] == [META, {}]
        out = io.StringIO()
        manifest.export_jsonl(out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["meta"] for line in lines] == [META, {}]


def test_the_first_listing_of_a_job_in_an_expansion_sets_its_meta(tmp_path: Path) -> None:
    """Two prompts that differ only in meta are one job: the first one listed wins. A
    later spec expansion (an edited spec) lists the job again with its own meta."""
    first, second = replace(make_job(1), meta={"id": 1}), replace(make_job(1), meta={"id": 2})
    with Manifest.open(tmp_path) as manifest:
        manifest.begin_generation()
        manifest.add_jobs([first, second])
        assert manifest.get(first.id).job.meta == {"id": 1}  # type: ignore[union-attr]
        manifest.begin_generation()
        manifest.add_jobs([second, first])
        assert manifest.get(first.id).job.meta == {"id": 2}  # type: ignore[union-attr]


def test_recover_keeps_meta(tmp_path: Path) -> None:
    jobs = [replace(job, meta={"n": n}) for n, job in enumerate(make_jobs(3))]
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(jobs)
        manifest.write_snapshot()
    (tmp_path / DB_NAME).write_bytes(b"")
    recover(tmp_path)
    with Manifest.open(tmp_path) as manifest:
        assert [r.job for r in manifest.iter_records()] == jobs


def test_a_schema_3_manifest_opens_and_migrates_with_empty_meta(tmp_path: Path) -> None:
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(make_jobs(2))
        manifest.transition(make_job(0).id, JobState.SUBMITTING, expect=JobState.PENDING)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:  # back to schema 3
        conn.execute("ALTER TABLE jobs DROP COLUMN meta")
        conn.execute("ALTER TABLE outputs DROP COLUMN root")  # added by 4 -> 5
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()

    with Manifest.open(tmp_path) as manifest:
        assert manifest.meta()["schema_version"] == str(SCHEMA_VERSION) == "5"
        records = list(manifest.iter_records())
        assert [r.job.meta for r in records] == [{}, {}]
        assert records[0].state is JobState.SUBMITTING
        manifest.add_jobs([replace(make_job(5), meta={"id": 5})])
        assert manifest.get(make_job(5).id).job.meta == {"id": 5}  # type: ignore[union-attr]


def test_recover_keeps_where_a_job_failed(tmp_path: Path) -> None:
    job = make_job(0)
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job])
        manifest.transition(job.id, JobState.SUBMITTING, expect=JobState.PENDING)
        manifest.transition(job.id, JobState.SUBMITTED, expect=JobState.SUBMITTING, remote_id="r1")
        manifest.transition(
            job.id, JobState.FAILED, expect=JobState.SUBMITTED, error="gone", failure="download"
        )
        before = manifest.get(job.id)
        manifest.write_snapshot()
    (tmp_path / DB_NAME).write_bytes(b"")
    recover(tmp_path)
    with Manifest.open(tmp_path) as manifest:
        after = manifest.get(job.id)
    assert before is not None and after is not None
    assert (after.state, after.remote_id, after.failure) == (JobState.FAILED, "r1", "download")
    assert before.failure == "download"
